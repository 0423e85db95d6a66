"""The host input path's throughput on a prepared dataset (`bench --pipeline`).

`measure` times the training stream read from the store's files, and beside
it, on the same images, the path the store replaced: the source decoded and
resized on every core, as the store is written from it.
"""

import time

import jax

from alexnet_jax import input_pipeline
from alexnet_jax.datasets import store as store_lib


def measure(spec: store_lib.Spec, reading: input_pipeline.Reading,
            split_name: str, batches: int = 50) -> dict:
  """The host input path on split `split_name` of the store `spec` names.

  `pipeline_img_per_sec`: from a fresh training stream's first batch to
  `batches` batches later, each a numpy batch ready for
  `make_array_from_process_local_data` (what the training loop is given).
  `pipeline_jpeg_img_per_sec`: the path the store replaced, on the same
  images: the source (a tfds dataset's records, or an image folder's files)
  decoded and resized on every core, as the store is written from it.
  Prepares the dataset and its store first if needed (not timed).
  """
  split = store_lib.prepare(None, spec, [split_name]).split(split_name)
  cores = input_pipeline.host_cores()
  used = min(reading.threads, cores)

  def timed(iterator, batch):
    next(iterator)  # The first batch: start-up is not throughput.
    t, cpu = time.perf_counter(), time.process_time()
    images = 0
    for _ in range(batches):
      images += len(next(iterator)[batch])
    seconds = time.perf_counter() - t
    return images / seconds, (time.process_time() - cpu) / seconds

  rate, cpu = timed(input_pipeline.train_stream(split, reading), 'image')
  def jpeg_path():  # Epoch after epoch, as training read it.
    while True:
      yield from store_lib.source_batches(spec, split_name)

  jpeg_rate, jpeg_cpu = timed(jpeg_path(), 'image')
  prepare_seconds = split.meta.get('prepare_seconds')
  return {
      'pipeline_img_per_sec': rate,
      'pipeline_cores': used,
      'pipeline_img_per_sec_per_core': rate / used,
      'pipeline_cpu_busy': cpu,  # CPU seconds per second: cores kept busy.
      'pipeline_bytes_per_image': split.bytes_per_image,
      'pipeline_store': split.path,
      'pipeline_store_format': split.format,
      'pipeline_batches': batches,
      'pipeline_batch': reading.batch_size // jax.process_count(),
      'pipeline_images_in_split': len(split),
      'pipeline_jpeg_img_per_sec': jpeg_rate,
      'pipeline_jpeg_img_per_sec_per_core': jpeg_rate / cores,
      'pipeline_jpeg_cpu_busy': jpeg_cpu,
      'pipeline_speedup_vs_jpeg': rate / jpeg_rate,
      'prepare_img_per_sec': (len(split) / max(prepare_seconds, 1e-3)
                              if prepare_seconds is not None else None),
      'host_cores': cores,
  }
