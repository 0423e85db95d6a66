"""What several test files share: toy configs, runs' outputs, commands.

Test files import from here, never from each other or from experiments/.
"""

import ast
import io
import json
import os
import re
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import input_pipeline
from alexnet_jax import metrics_log
from alexnet_jax import model as model_lib
from alexnet_jax import optim
from alexnet_jax import parallel
from alexnet_jax import steps as steps_lib
from alexnet_jax import workdir as workdir_lib
from alexnet_jax.datasets import stats as stats_lib
from alexnet_jax.datasets import store
from alexnet_jax.configs import default
from alexnet_jax.configs import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shrink(config, batch_size=16, eval_batch_size=40):
  """Any config at toy size (configs/default.py TOY) on a 1x1 mesh."""
  default.with_arg(config, 'toy')
  config.mesh.data = config.mesh.model = 1
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size
  return config


def tiny_config(data_dir=None):
  """The digits config shrunk so a train step takes milliseconds."""
  config = shrink(digits.get_config())
  config.data_dir = data_dir
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  return config


def timed_writes(monkeypatch):
  """A list that gets (wall time, record) for every metrics record written
  (the times at which a reader of metrics.jsonl sees them)."""
  import time  # pylint: disable=g-import-not-at-top
  written = []
  write = metrics_log.MetricsLog.write

  def timed_write(self, record):
    written.append((time.time(), record))
    write(self, record)

  monkeypatch.setattr(metrics_log.MetricsLog, 'write', timed_write)
  return written


def read_metrics(workdir):
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def final_params(workdir):
  """The newest checkpoint's parameters, on this process's first device."""
  return workdir_lib.read_params(*workdir_lib.locate(workdir))[0]


def train_records(workdir):
  return [{k: r[k] for k in ('step', 'loss', 'top1_err', 'top5_err', 'lr')}
          for r in read_metrics(workdir) if r['split'] == 'train']


def assert_same_run(a, b, params_atol=1e-7):
  """Asserts that runs a and b logged the same records and end equal.

  Args:
    a: one run's workdir.
    b: the other's.
    params_atol: absolute tolerance on the final parameters only (the records'
      loss, errors and learning rate stay at rel 1e-5): larger for runs on
      different meshes, which sum in another order (see
      train_test.test_checkpoint_restores_onto_any_mesh).
  """
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=params_atol),
               final_params(a), final_params(b))
  ra, rb = train_records(a), train_records(b)
  assert [r['step'] for r in ra] == [r['step'] for r in rb]
  for x, y in zip(ra, rb):
    for k in x:
      if x[k] is None or y[k] is None:  # float16: a window all skipped.
        assert x[k] is None and y[k] is None, (k, x, y)
      else:
        assert x[k] == pytest.approx(y[k], rel=1e-5), (k, x, y)


def validation(config):
  split = store.get(config).split(config.eval_split)
  batches = list(input_pipeline.eval_batches(
      split, input_pipeline.Reading.from_config(config)))
  keep = np.concatenate([b['mask'] for b in batches]) > 0
  images = np.concatenate([b['image'] for b in batches])[keep]
  labels = np.concatenate([b['label'] for b in batches])[keep]
  return images, labels


def bomb_png(side=30000):
  """A PNG of about 110 kB that declares side x side pixels (900 M)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.new('1', (side, side)).save(buf, format='PNG')
  return buf.getvalue()


STEPS = 3


def STATS(size):  # pylint: disable=invalid-name
  eigvecs, _ = np.linalg.qr(np.arange(9.0).reshape(3, 3) + np.eye(3))
  return stats_lib.Stats(mean=jnp.full((size, size, 3), 100.0),
                         eigvals=jnp.array([0.2, 0.02, 0.005]),
                         eigvecs=jnp.asarray(eigvecs, jnp.float32))


def run_steps(mesh_shape, config=None, scheme='towers', num_classes=10,
              devices=None):
  config = config or tiny_config()
  config.mesh.scheme = scheme
  config.model.num_classes = num_classes
  config.eval_crops = 10
  config.augment.flip = True
  config.mesh.data, config.mesh.model = mesh_shape
  mesh = parallel.create_mesh(*mesh_shape, devices=devices)
  model = model_lib.create_model(config.model)
  tx, _ = optim.create(config, steps_per_epoch=10)
  steps = steps_lib.create(config, model, tx, mesh)
  state = steps.init_state(jax.random.key(0))
  rng = np.random.RandomState(0)
  size = config.image_size
  stats = jax.device_put(STATS(size), parallel.replicated(mesh))
  losses = []
  for _ in range(STEPS):
    batch = {'image': rng.randint(0, 256, (config.batch_size, size, size, 3),
                                  dtype=np.uint8),
             'label': rng.randint(0, 10, (config.batch_size,)).astype(np.int32)}
    state, metrics = steps.train_step(
        state, input_pipeline.to_global(batch, mesh), stats, jax.random.key(1))
    losses.append(float(metrics['loss']))
  eval_batch = dict(batch, mask=np.ones((config.batch_size,), np.float32))
  sums = steps.eval_step(state.params, input_pipeline.to_global(
      eval_batch, mesh), stats, crops=config.eval_crops)
  return losses, jax.device_get(state.params), jax.device_get(sums)


def run_cli(args, devices=2, timeout=300, cwd=ROOT):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main'] + args, cwd=cwd, env=env,
      capture_output=True, text=True, timeout=timeout, check=False)


def assert_one_line_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines()
            if l.startswith('alexnet_jax: error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], errors[0]


# With the config argument ':toy' (which keeps the README's mesh flags).
TINY = ['--config.eval_crops=1', '--config.log_every_steps=2',
        '--config.checkpoint_every_steps=4']


def cluster_commands():
  """The shell commands of README's "From a laptop to a cluster" section."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  section = text.split('## From a laptop to a cluster')[1].split('\n## ')[0]
  blocks = re.findall(r'```bash\n(.*?)```', section, re.S)
  return [b.strip() for b in blocks]


def split_command(command):
  """(environment, python -m alexnet_jax.main arguments, launcher) of one."""
  words = shlex.split(command)
  env = {}
  while '=' in words[0] and not words[0].startswith('-'):
    key, value = words.pop(0).split('=', 1)
    env[key] = value
  launcher = []
  while words[0] != 'python':
    launcher.append(words.pop(0))
  assert words[:3] == ['python', '-m', 'alexnet_jax.main'], command
  return env, words[3:], launcher


def command(*needles):
  """The one README command containing every needle."""
  found = [c for c in cluster_commands() if all(n in c for n in needles)]
  assert len(found) == 1, (needles, found)
  return split_command(found[0])


def with_digits(args, digits_dir, workdir, steps):
  """A README command's arguments, made tiny and pointed at the digits."""
  args = list(args)
  args[args.index('--workdir') + 1] = workdir
  args[args.index('--config') + 1] += ':toy'
  return args + ['--config.dataset=digits', f'--config.data_dir={digits_dir}',
                 '--config.model.num_classes=10',
                 f'--config.num_train_steps={steps}'] + TINY


def config_from(args):
  """The config a README command builds (its --config file and overrides)."""
  path, *arg = args[args.index('--config') + 1].split(':', 1)
  namespace = {}
  with open(os.path.join(ROOT, path)) as f:
    exec(compile(f.read(), path, 'exec'), namespace)  # pylint: disable=exec-used
  config = namespace['get_config'](*arg)
  for arg in args:
    if not arg.startswith('--config.'):
      continue
    key, value = arg[len('--config.'):].split('=', 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # A string.
    *parents, name = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[name] = value
  return config
