"""The notebooks' install step and workdir, for Colab or any fresh kernel.

The install cell runs this file by path (`runpy.run_path`), before
alexnet_jax is installed, so it uses the standard library only.

Colab's jax comes with a CUDA (or TPU) jaxlib. If pip were allowed to touch
jax, a version range it cannot meet with Colab's copy makes it install a
CPU-only jaxlib from PyPI, and JAX then runs on the CPU without a word
(jax-ml/jax#2074). So `install` pins every jax package already installed to
its installed version, and stops, in one line, where that version is below
alexnet_jax's floor (setup.cfg): it never downgrades or replaces them.
"""

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

DRIVE_MOUNT = '/content/drive'
DRIVE_ROOT = os.path.join(DRIVE_MOUNT, 'MyDrive', 'alexnet_jax')


def _version_tuple(version: str) -> Tuple[int, ...]:
  """A version as a tuple that orders like PEP 440 for what a floor needs:
  '0.10.2' -> (0, 10, 2, 0, 1); a pre-release sorts below its release
  ('0.10.2rc1' -> (0, 10, 2, 0, 0)), a post-release or local build with it."""
  found = re.match(r'\s*v?(\d+(?:\.\d+)*)(.*)', version)
  if not found:
    return (0,)
  release = [int(p) for p in found.group(1).split('.')][:4]
  release += [0] * (4 - len(release))
  pre = re.match(r'[-_.]?(a|b|c|rc|alpha|beta|pre|preview|dev)',
                 found.group(2).split('+')[0].lower())
  return tuple(release) + ((0,) if pre else (1,))


def floors(setup_cfg: str) -> Dict[str, str]:
  """{package: lowest version} from setup.cfg's install_requires."""
  with open(setup_cfg) as f:
    text = f.read()
  block = re.search(r'install_requires\s*=\s*\n((?:[ \t]+\S.*\n?)+)', text)
  found = {}
  for line in (block.group(1).splitlines() if block else []):
    m = re.match(r'\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([\w.]+)', line)
    if m:
      found[m.group(1).lower()] = m.group(2)
  return found


def _installed_jax_packages() -> Dict[str, str]:
  """{name: version} of jax, jaxlib and their plugins (jax-cuda12-plugin,
  jax-cuda12-pjrt, libtpu...) in this environment."""
  found = {}
  for dist in importlib.metadata.distributions():
    name = (dist.metadata['Name'] or '').lower().replace('_', '-')
    if name in ('jax', 'jaxlib', 'libtpu', 'libtpu-nightly') or (
        name.startswith('jax-cuda') or name.startswith('jax-rocm')):
      found[name] = dist.version
  return found


def install_command(src: str, installed: Dict[str, str], has_tensorflow: bool,
                    constraints_dir: str) -> List[str]:
  """The pip command that installs `src` keeping `installed` jax packages;
  raises SystemExit (one line) where the installed jax is below the floor."""
  floor = floors(os.path.join(src, 'setup.cfg')).get('jax')
  jax_version = installed.get('jax')
  if jax_version and floor and _version_tuple(jax_version) < _version_tuple(
      floor):
    raise SystemExit(
        f'This runtime has jax {jax_version}, older than the {floor} '
        'alexnet_jax needs, and installing would replace its accelerator '
        'jaxlib with a CPU one (jax-ml/jax#2074): choose a newer runtime, or '
        'upgrade jax for its accelerator yourself (e.g. pip install -U '
        '"jax[cuda12]") and restart the session.')
  command = [sys.executable, '-m', 'pip', 'install', '-q']
  if installed:
    pins = os.path.join(constraints_dir, 'keep_installed_jax.txt')
    with open(pins, 'w') as f:
      f.write(''.join(f'{n}=={v}\n' for n, v in sorted(installed.items())))
    command += ['-c', pins]
  # TensorFlow (host-side input only) comes with the `cpu` extra where it is
  # missing; Colab has its own.
  return command + ['-e', src if has_tensorflow else src + '[cpu]']


def install(src: str, check_call: Callable = subprocess.check_call,
            installed: Optional[Dict[str, str]] = None,
            has_tensorflow: Optional[bool] = None) -> List[str]:
  """Installs the repository at `src` without touching the installed jax."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if installed is None:
    installed = _installed_jax_packages()
  if has_tensorflow is None:
    has_tensorflow = importlib.util.find_spec('tensorflow') is not None
  command = install_command(src, installed, has_tensorflow,
                            tempfile.mkdtemp(prefix='alexnet_jax_install_'))
  check_call(command)
  return command


def workdir(path: str, drive: bool = False) -> str:
  """The notebook's WORKDIR: `path`, or with `drive` the same path under
  Google Drive (mounted once), where a run survives a recycled runtime and
  resumes from its last checkpoint when the notebook is run again."""
  if not drive:
    return path
  from google.colab import drive as colab_drive  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(DRIVE_MOUNT, 'MyDrive')):
    colab_drive.mount(DRIVE_MOUNT)
  return os.path.join(DRIVE_ROOT, path.lstrip('/'))
