"""The GPU host's device check, rehearsed at toy size on CPU."""

import json
import os

import numpy as np
from PIL import Image
import pytest


def _folder(root, classes=('a', 'b'), train=12, val=4, size=40):
  rng = np.random.RandomState(0)
  for split, n in (('train', train), ('val', val)):
    for c in classes:
      os.makedirs(os.path.join(root, split, c))
      for i in range(n):
        pixels = rng.randint(0, 256, (size, size, 3), np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, split, c, f'{i}.jpg'))


@pytest.mark.slow
def test_the_device_check_rehearses_every_part_on_cpu(tmp_path):
  from experiments import device_check  # pylint: disable=g-import-not-at-top
  folders = {}
  for name in ('cifar10', 'imagenette'):
    folders[name] = str(tmp_path / name)
    _folder(folders[name])
  device_dir = str(tmp_path / 'device')
  data = device_check.prepare(folders, device_dir, rehearse=True,
                              wheels=False)
  assert {d['train_images'] for d in data.values()} == {24}
  out = str(tmp_path / 'out')
  summary = device_check.check(out, device_dir, rehearse=True)
  assert all(p['ok'] for p in summary['parts'].values()), summary
  assert list(summary['parts']) == list(device_check.PARTS)
  files = sorted(os.listdir(out))
  assert files == sorted(['sweep.json', 'tests.json', 'cifar10.json',
                          'imagenette.json', 'custom_vjp.json',
                          'device_check.json', 'device_check.log'])
  assert len(files) <= 8  # What the host sends back.
  read = lambda name: json.load(open(os.path.join(out, name)))
  assert [r['dtype'] for r in read('sweep.json')['rows']] == [
      'float32', 'bfloat16', 'float16']
  assert all('error' not in r for r in read('sweep.json')['rows'])
  for name in ('cifar10', 'imagenette'):
    run = read(f'{name}.json')
    assert run['train_img_per_sec_median'] > 0, run
    assert 0 <= run['input_wait_share_median'] <= 1
    assert run['device_memory_gb'] is None  # CPU reports none.
    assert run['real_over_synthetic'] > 0
  assert read('imagenette.json')['dtype'] == 'bfloat16'
  vjp = read('custom_vjp.json')
  assert vjp['custom']['bitwise_deterministic']  # On CPU both are.
  assert vjp['autodiff']['bitwise_deterministic']
  # The host's limits fit its budget (the rehearsal's time is not asserted:
  # it moves with the machine's load).
  assert sum(host for host, _ in device_check.PARTS.values()) <= (
      device_check.TOTAL_S[0])


def test_a_failed_part_is_retried_once_and_a_timed_out_one_is_not(
    tmp_path, monkeypatch):
  import subprocess  # pylint: disable=g-import-not-at-top
  from experiments import device_check  # pylint: disable=g-import-not-at-top
  calls, killed = [], []

  class FakeProcess:
    pid = 12345

    def __init__(self, cmd, **kwargs):
      assert kwargs['start_new_session']  # Its children die with it.
      self.part = cmd[cmd.index('--part') + 1]
      calls.append(self.part)

    def wait(self, timeout=None):
      if self.part == 'sweep' and timeout is not None:
        calls.append(timeout)
        raise subprocess.TimeoutExpired('sweep', timeout)
      return 1 if self.part == 'tests' and calls.count('tests') == 1 else 0
  monkeypatch.setattr(device_check.subprocess, 'Popen', FakeProcess)
  monkeypatch.setattr(device_check.os, 'killpg',
                      lambda pid, sig: killed.append(pid))
  summary = device_check.check(str(tmp_path), str(tmp_path / 'none'),
                               parts=('sweep', 'tests', 'cifar10'))
  # The sweep ran out of its 170 s: killed, with its group, not retried.
  assert calls == ['sweep', 170, 'tests', 'tests', 'cifar10']
  assert killed == [12345]
  parts = summary['parts']
  assert not parts['sweep']['ok'] and parts['tests']['ok']
  assert [a['rc'] for a in parts['tests']['attempts']] == [1, 0]
  with open(tmp_path / 'device_check.json') as f:
    assert json.load(f)['parts']['cifar10']['ok']
