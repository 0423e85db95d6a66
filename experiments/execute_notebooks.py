"""Runs the notebooks top to bottom at toy size and saves them with outputs.

  python -m experiments.execute_notebooks [--names quickstart,...]

Each runs in a fresh temporary folder (its WORKDIR is relative to it) with
ALEXNET_JAX_SMALL=1, so the committed outputs are the toy runs' figures and
lines, which a reader on GitHub sees without running anything. Progress bars
and library warnings (stderr) are left out of what is saved, and the figures
are saved at most 640 pixels wide (256-colour PNGs, or JPEGs for photos). The test suite
re-executes the notebooks (tests/notebooks_test.py) but never compares their
bytes with these.
"""

import os
import tempfile

from alexnet_jax import cli

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTEBOOKS = ('quickstart', 'feature_extraction', 'paper_figures')


def execute(name: str, cwd: str, timeout: int = 900):
  """The executed notebook (nbformat), run in `cwd`."""
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  book = nbformat.read(os.path.join(HERE, f'{name}.ipynb'), as_version=4)
  nbclient.NotebookClient(book, timeout=timeout, kernel_name='python3',
                          resources={'metadata': {'path': cwd}}).execute()
  return book


def _small_image(data: str, width: int):
  """(mime type, base64) of a PNG at most `width` pixels wide: a 256-colour
  PNG (plots), or a JPEG where that is still large (grids of photos)."""
  import base64  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.open(io.BytesIO(base64.b64decode(data))).convert('RGB')
  image.thumbnail((width, width * 4))
  out = io.BytesIO()
  image.quantize(256).save(out, 'PNG', optimize=True)
  mime = 'image/png'
  if out.tell() > 40_000:
    out = io.BytesIO()
    image.save(out, 'JPEG', quality=75, optimize=True)
    mime = 'image/jpeg'
  return mime, base64.b64encode(out.getvalue()).decode('ascii')


def small_outputs(book, width: int = 640):
  """Leaves stderr out and shrinks the figures, for a small commit."""
  for cell in book.cells:
    if cell.cell_type != 'code':
      continue
    cell.outputs = [o for o in cell.outputs
                    if not (o.output_type == 'stream' and o.name == 'stderr')]
    for o in cell.outputs:
      if 'image/png' in o.get('data', {}):
        mime, data = _small_image(o.data.pop('image/png'), width)
        o.data[mime] = data
        o.get('metadata', {}).pop('image/png', None)  # Its old size.
  return book


def main(argv=None):
  import nbformat  # pylint: disable=g-import-not-at-top
  parser = cli.ArgumentParser(prog='python -m experiments.execute_notebooks',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--names', default=','.join(NOTEBOOKS))
  args = parser.parse_args(argv)
  os.environ['ALEXNET_JAX_SMALL'] = '1'
  os.environ['PYTHONPATH'] = os.pathsep.join(
      [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  with tempfile.TemporaryDirectory(prefix='notebooks_') as cwd:
    # The three share one run, as a reader's would: quickstart trains it.
    for name in args.names.split(','):
      book = small_outputs(execute(name, cwd))
      nbformat.write(book, os.path.join(HERE, f'{name}.ipynb'))
      size = os.path.getsize(os.path.join(HERE, f'{name}.ipynb'))
      print(f'{name}.ipynb: executed, {size / 1e3:.0f} kB with outputs')


if __name__ == '__main__':
  main()
