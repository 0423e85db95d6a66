"""One rehearsed check of what a GPU host must tell us, in one command.

Here, on CPU, once (needs the image folders, TensorFlow and the registry):

  python -m experiments.device_check --prepare --cifar10 DIR --imagenette DIR

writes `.device/` (git-ignored, about 45 MB): small stores of both datasets,
`data.json` saying where they are, and `wheels/`, the packages the host lacks
(grain, array_record, ml_collections, portpicker). On the GPU host, with
`.device` carried beside the working tree:

  python -m experiments.device_check --out $OUT

installs the wheels into a private folder if the packages are missing, then
runs the parts below in this order, each in its own process with its own
time limit, retried once if it fails (not if it ran out of time), the whole
within 8 minutes, each writing its JSON to --out as soon as it ends (a part
cut short keeps what it wrote: the sweep, every row so far; 7 files in all):

  sweep       bench --sweep: the train step in float32, bfloat16 and float16
              (with its dynamic loss scale, for T4 and V100 users) at batch
              128, 256, 512 and 1024 on one device (both towers on it: 1x1);
              float16 last, so a sweep cut short keeps the other two
  tests       pytest -m accelerator (tests/accelerator_test.py)
  cifar10     Figure 1's CIFAR-10 network trained 5 epochs from the store,
              against the synthetic rate of the same network and batch
  imagenette  the two-tower AlexNet, 300 steps at batch 256 in bfloat16 from
              the Imagenette store, against its synthetic rate
  custom_vjp  the train step with the hand-written LRN and max-pool VJPs and
              with autodiff's (model.custom_vjp), timed, and whether each
              gives bitwise the same weights twice

`device_check.json` records each part's status, attempts and seconds, and
`device_check.log` everything the parts printed. `--rehearse` runs every part
at toy size on CPU (tests/device_check_test.py does), from stores it makes
itself: 3-6 minutes on 2 cores, depending on their load.
"""

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from alexnet_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_DIR = os.path.join(ROOT, '.device')
# The packages the GPU host lacks that the read path needs (measured wheel
# sizes, CPython 3.12 manylinux: array_record 3.8 MB, grain 0.6 MB,
# ml_collections 77 kB, portpicker 16 kB).
WHEELS = ('grain', 'array_record', 'ml_collections', 'portpicker')
# Each part's limit in seconds on the GPU host (compilation included), and
# at toy size on CPU. The host's total stays under 8 minutes. The rehearsal's
# limits only catch a hang: on 2 shared cores a toy part has taken 40-150 s.
# Each part gets the smaller of its limit and what is left of the total.
PARTS = {'sweep': (170, 300), 'tests': (60, 300), 'cifar10': (60, 300),
         'imagenette': (90, 300), 'custom_vjp': (60, 300)}
# The whole check, retries included, on the host and in a rehearsal.
TOTAL_S = (480, 1200)
# How much of each dataset the stores hold: within the 64 MiB that travel.
SUBSETS = {'cifar10': dict(train=500, val=100, fmt='raw'),
           'imagenette': dict(train=100, val=20, fmt='jpeg')}


def _write_json(path, obj):
  with open(path + '.tmp', 'w') as f:
    json.dump(obj, f, indent=1, default=repr)
  os.replace(path + '.tmp', path)


# ---- Preparation (here, on CPU) ---------------------------------------------

def _subset(src: str, dst: str, per_class: int):
  """The first `per_class` files of each class of src's train/ and val/."""
  for split in ('train', 'val'):
    n = per_class[split]
    for cls in sorted(os.listdir(os.path.join(src, split))):
      os.makedirs(os.path.join(dst, split, cls), exist_ok=True)
      for name in sorted(os.listdir(os.path.join(src, split, cls)))[:n]:
        shutil.copy(os.path.join(src, split, cls, name),
                    os.path.join(dst, split, cls, name))


def dataset_config(name: str, data: dict, rehearse: bool = False):
  """The config that trains on the prepared store `name` of data.json."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  from alexnet_jax.configs import default  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import figure1_cifar10  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import image_folder  # pylint: disable=g-import-not-at-top
  entry = data[name]
  if name == 'cifar10':
    config = figure1_cifar10.get_config()
    config.stop_at_train_err = -1.0  # Five whole epochs, whatever the error.
  else:
    config = image_folder.get_config()
  if rehearse:
    default.with_arg(config, 'toy')
  config.dataset = 'image_folder'
  config.data_dir = entry['data_dir']
  config.eval_split = 'validation'
  config.model.num_classes = entry['num_classes']
  config.store.dir = entry['store_dir']
  config.store.format = entry['format']
  config.store.check_source = False  # The folder stays behind.
  config.mesh.data = config.mesh.model = 1
  return config


def prepare(folders: dict, out: str = DEVICE_DIR, rehearse: bool = False,
            wheels: bool = True):
  """Small stores of each folder under out/stores, and out/data.json."""
  from alexnet_jax.datasets import store  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  data = {}
  for name, src in folders.items():
    sub = SUBSETS[name]
    # A fixed path: the store is keyed by its folder's path, which the host
    # is given again from data.json (where the folder does not exist).
    folder = os.path.join(tempfile.gettempdir(), 'alexnet_jax_device_check',
                          name)
    shutil.rmtree(folder, ignore_errors=True)
    _subset(src, folder, {'train': sub['train'], 'val': sub['val']})
    classes = sorted(os.listdir(os.path.join(folder, 'train')))
    data[name] = dict(data_dir=folder, store_dir=os.path.join(out, 'stores'),
                      format=sub['fmt'], num_classes=len(classes),
                      source=os.path.abspath(src))
    config = dataset_config(name, data, rehearse)
    prepared = store.get(config, ['train', 'validation'])
    data[name].update(
        image_size=config.image_size,
        train_images=len(prepared.split('train')),
        val_images=len(prepared.split('validation')),
        bytes=sum(os.path.getsize(p) for p in glob.glob(
            os.path.join(prepared.root, '**', '*'), recursive=True)
                  if os.path.isfile(p)))
    shutil.rmtree(folder)
  # Relative to the repository, so the check finds it wherever it lands.
  for entry in data.values():
    entry['store_dir'] = os.path.relpath(entry['store_dir'], ROOT)
  _write_json(os.path.join(out, 'data.json'), data)
  if wheels:
    _download_wheels(os.path.join(out, 'wheels'))
  size = sum(os.path.getsize(p) for p in glob.glob(
      os.path.join(out, '**', '*'), recursive=True) if os.path.isfile(p))
  print(f'device_check: wrote {out} ({size / 2**20:.1f} MiB)')
  return data


def _download_wheels(where: str):
  """The host's missing packages, at this project's tested versions."""
  pins = {}
  with open(os.path.join(ROOT, 'constraints.txt')) as f:
    for line in f:
      name, _, version = line.strip().partition('==')
      pins[name.lower().replace('-', '_')] = version
  os.makedirs(where, exist_ok=True)
  platforms = sum((['--platform', p] for p in (
      'manylinux_2_28_x86_64', 'manylinux_2_27_x86_64',
      'manylinux_2_24_x86_64', 'manylinux_2_17_x86_64',
      'manylinux2014_x86_64')), [])
  for name in WHEELS:
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q',
                    '--no-deps', '--only-binary=:all:', '--python-version',
                    '3.12', '--implementation', 'cp', *platforms, '-d', where,
                    f'{name}=={pins[name]}'], check=True)


def install_missing_wheels(where: str, target: str):
  """pip-installs the carried wheels whose packages cannot be imported."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = [n for n in WHEELS if importlib.util.find_spec(n) is None]
  wheels = [w for w in glob.glob(os.path.join(where, '*.whl'))
            if os.path.basename(w).split('-')[0].lower() in missing]
  if wheels:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                    '--no-index', '--no-deps', '--no-compile',
                    '--no-cache-dir', '--upgrade', '--target', target,
                    *wheels],
                   check=True)
  return missing


# ---- The parts (each in its own process) ------------------------------------

def part_sweep(out, data, rehearse):
  del data
  from alexnet_jax import bench  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import default  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import ilsvrc2012  # pylint: disable=g-import-not-at-top
  config = ilsvrc2012.get_config()
  if rehearse:
    default.with_arg(config, 'toy')
  config.mesh.data = config.mesh.model = 1  # One GPU holds both towers.
  # One batch in rehearsal: each row is a compile, which is most of the
  # rehearsal's time on 2 busy cores; every dtype still runs.
  bench.sweep(config, (4,) if rehearse else (128, 256, 512, 1024),
              dtypes=('float32', 'bfloat16', 'float16'),
              steps=2 if rehearse else 10, warmup=1,
              out=os.path.join(out, 'sweep.json'),
              log=lambda line: print(line, flush=True))


def part_tests(out, data, rehearse):
  del data, rehearse
  proc = subprocess.run(
      # No setup.cfg addopts: they name pytest-xdist, which a host may lack.
      [sys.executable, '-m', 'pytest', '-q', '-o', 'addopts=-ra', '-m',
       'accelerator', '-p', 'no:cacheprovider',
       os.path.join('tests', 'accelerator_test.py')],
      cwd=ROOT, capture_output=True, text=True)
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  print('\n'.join(lines[-40:]))
  _write_json(os.path.join(out, 'tests.json'), {
      'returncode': proc.returncode, 'summary': lines[-1] if lines else '',
      'tail': lines[-40:]})
  if proc.returncode not in (0, 5):  # 5: nothing collected.
    raise SystemExit(f'pytest -m accelerator failed ({lines[-1]})')


def _train_on_store(name, out, data, rehearse, **overrides):
  """Trains on a carried store; its rates against the synthetic ones."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import bench  # pylint: disable=g-import-not-at-top
  from alexnet_jax import synthetic as synthetic_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  from alexnet_jax import viz  # pylint: disable=g-import-not-at-top
  config = dataset_config(name, data, rehearse)
  config.update_from_flattened_dict(overrides)
  workdir = tempfile.mkdtemp(prefix=f'device_check_{name}_')
  start = time.time()
  final = train.train_and_evaluate(config, workdir)
  seconds = time.time() - start
  records = viz.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  windows = [r for r in records if r['split'] == 'train']
  synthetic, _ = bench.bench_train(synthetic_lib.setup(config),
                                   steps=5 if rehearse else 20, warmup=1)
  real = statistics.median(r['img_per_sec'] for r in windows)
  memory = [r['device_memory_gb'] for r in windows
            if r.get('device_memory_gb') is not None]
  result = {
      'dataset': name, 'device': jax.local_devices()[0].device_kind,
      'batch': config.batch_size, 'dtype': config.model.dtype,
      'arch': config.model.arch, 'steps': windows[-1]['step'],
      'images_in_store': data[name].get('train_images'),
      'store_format': config.store.format, 'wall_seconds': seconds,
      'train_img_per_sec_median': real,
      'train_img_per_sec_windows': [r['img_per_sec'] for r in windows],
      'input_wait_share_median': statistics.median(
          r['input_wait_share'] for r in windows),
      'device_memory_gb': max(memory) if memory else None,
      'synthetic_img_per_sec': synthetic['train_img_per_sec'],
      'real_over_synthetic': real / synthetic['train_img_per_sec'],
      'final_eval': final}
  _write_json(os.path.join(out, f'{name}.json'), result)
  print(json.dumps({k: v for k, v in result.items()
                    if k != 'train_img_per_sec_windows'}, default=repr))
  shutil.rmtree(workdir, ignore_errors=True)


def part_cifar10(out, data, rehearse):
  batch = 8 if rehearse else 128
  per_epoch = data['cifar10']['train_images'] // batch
  _train_on_store('cifar10', out, data, rehearse,
                  num_epochs=2 if rehearse else 5, batch_size=batch,
                  eval_batch_size=batch,
                  log_every_steps=max(per_epoch // 4, 1),
                  checkpoint_every_steps=10 * per_epoch,
                  eval_every_epochs=100.0)


def part_imagenette(out, data, rehearse):
  _train_on_store('imagenette', out, data, rehearse,
                  num_train_steps=6 if rehearse else 300,
                  batch_size=8 if rehearse else 256,
                  eval_batch_size=8 if rehearse else 256,
                  **{'model.dtype': 'bfloat16'},
                  log_every_steps=2 if rehearse else 25,
                  checkpoint_every_steps=1000, eval_every_epochs=1000.0)


def part_custom_vjp(out, data, rehearse):
  """Each VJP's step time, and whether it is deterministic here."""
  del data
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from alexnet_jax import bench  # pylint: disable=g-import-not-at-top
  from alexnet_jax import synthetic as synthetic_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import default  # pylint: disable=g-import-not-at-top
  from alexnet_jax.configs import ilsvrc2012  # pylint: disable=g-import-not-at-top
  result = {'device': jax.local_devices()[0].device_kind}
  for custom in (True, False):
    config = ilsvrc2012.get_config()
    if rehearse:
      default.with_arg(config, 'toy')
    config.mesh.data = config.mesh.model = 1
    config.batch_size = 8 if rehearse else 256
    config.model.dtype = 'bfloat16'
    config.model.custom_vjp = custom
    timed, step = bench.bench_train(synthetic_lib.setup(config),
                                    steps=3 if rehearse else 20, warmup=2)
    s = step.setup
    weights = []
    for _ in range(2):  # The same steps from the same start, twice.
      state = s.steps.init_state(jax.random.key(0))
      for _ in range(3):
        state, _ = step.compiled(state, s.batch, s.stats, s.key)
      weights.append(jax.device_get(state.params))
    same = all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(weights[0]), jax.tree.leaves(weights[1])))
    result['custom' if custom else 'autodiff'] = {
        'train_img_per_sec': timed['train_img_per_sec'],
        'train_step_ms': timed['train_step_ms'],
        'compile_seconds': timed['compile_seconds'],
        'bitwise_deterministic': same}
  result['custom_over_autodiff_speed'] = (
      result['custom']['train_img_per_sec'] /
      result['autodiff']['train_img_per_sec'])
  _write_json(os.path.join(out, 'custom_vjp.json'), result)
  print(json.dumps(result))


PART_FUNCTIONS = {'sweep': part_sweep, 'tests': part_tests,
                  'cifar10': part_cifar10, 'imagenette': part_imagenette,
                  'custom_vjp': part_custom_vjp}


# ---- The check ---------------------------------------------------------------

def check(out: str, device_dir: str = DEVICE_DIR, rehearse: bool = False,
          parts=tuple(PARTS)) -> dict:
  """Runs the parts in order, each in a process with a time limit, retried
  once; returns (and writes) the summary."""
  os.makedirs(out, exist_ok=True)
  env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
  site = os.path.join(tempfile.gettempdir(), 'alexnet_jax_device_site')
  missing = install_missing_wheels(os.path.join(device_dir, 'wheels'), site)
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (ROOT, site if missing else '', env.get('PYTHONPATH', ''))
      if p)
  if rehearse:
    # One CPU device, as the host has one GPU (the test suite simulates 8).
    env['JAX_PLATFORMS'] = 'cpu'
    env['XLA_FLAGS'] = ' '.join(
        f for f in env.get('XLA_FLAGS', '').split()
        if not f.startswith('--xla_force_host_platform_device_count'))
  summary = {'rehearse': rehearse, 'installed_wheels_for': missing,
             'parts': {}}
  log_path = os.path.join(out, 'device_check.log')
  start = time.time()
  with open(log_path, 'a') as log:
    for name in parts:
      entry = summary['parts'][name] = {'attempts': []}
      for attempt in (1, 2):
        # A retry never takes the check past its total.
        left = TOTAL_S[1 if rehearse else 0] - (time.time() - start)
        limit = int(min(PARTS[name][1 if rehearse else 0], left))
        if limit < 10:
          entry['attempts'].append({'rc': 'no time left', 'seconds': 0})
          break
        entry['limit_s'] = limit
        t = time.time()
        log.write(f'\n==== {name}, attempt {attempt} (limit {limit} s)\n')
        log.flush()
        cmd = [sys.executable, '-m', 'experiments.device_check', '--part',
               name, '--out', out, '--device_dir', device_dir]
        if rehearse:
          cmd.append('--rehearse')
        # Its own process group, so a timeout also ends what it started
        # (pytest's process, holding GPU memory).
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
          rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()
          rc = 'timeout'
        entry['attempts'].append({'rc': rc, 'seconds': time.time() - t})
        print(f'device_check: {name} attempt {attempt}: '
              f'{"ok" if rc == 0 else rc} in {time.time() - t:.0f} s',
              flush=True)
        if rc in (0, 'timeout'):
          break  # A part that ran out of time would again; its JSON stays.
      entry['ok'] = entry['attempts'][-1]['rc'] == 0
      summary['seconds'] = time.time() - start
      _write_json(os.path.join(out, 'device_check.json'), summary)
  return summary


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m experiments.device_check',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--out', help='where the results go')
  parser.add_argument('--device_dir', default=DEVICE_DIR,
                      help='the prepared stores and wheels (default .device)')
  parser.add_argument('--prepare', action='store_true',
                      help='make --device_dir from --cifar10 and --imagenette')
  parser.add_argument('--cifar10', help='a CIFAR-10 image folder')
  parser.add_argument('--imagenette', help='an Imagenette image folder')
  parser.add_argument('--rehearse', action='store_true',
                      help='every part at toy size on CPU')
  parser.add_argument('--parts', default=','.join(PARTS))
  parser.add_argument('--part', help=argparse.SUPPRESS)  # One, in-process.
  args = parser.parse_args(argv)
  if args.prepare:
    folders = {k: v for k, v in (('cifar10', args.cifar10),
                                 ('imagenette', args.imagenette)) if v}
    if not folders:
      parser.error('--prepare needs --cifar10 DIR and/or --imagenette DIR')
    prepare(folders, args.device_dir, args.rehearse)
    return 0
  if not args.out:
    parser.error('--out DIR is required')
  data_path = os.path.join(args.device_dir, 'data.json')
  if args.part:
    if ROOT not in sys.path:
      sys.path.insert(0, ROOT)
    data = {}
    if os.path.exists(data_path):
      with open(data_path) as f:
        data = json.load(f)
      for entry in data.values():
        entry['store_dir'] = os.path.join(ROOT, entry['store_dir'])
    PART_FUNCTIONS[args.part](args.out, data, args.rehearse)
    return 0
  unknown = set(args.parts.split(',')) - set(PARTS)
  if unknown:
    parser.error(f'unknown parts {sorted(unknown)}; choose from {list(PARTS)}')
  if not os.path.exists(data_path) and {'cifar10', 'imagenette'} & set(
      args.parts.split(',')):
    parser.error(f'{data_path} is missing: run --prepare here first (see '
                 'experiments/README.md)')
  summary = check(args.out, args.device_dir, args.rehearse,
                  [p for p in PARTS if p in args.parts.split(',')])
  return 0 if all(p['ok'] for p in summary['parts'].values()) else 1


if __name__ == '__main__':
  cli.run_main(main, 'experiments.device_check')
