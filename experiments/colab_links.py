"""Gives the notebooks the repository's public address: one setting.

  python -m experiments.colab_links --repo github.com/ORG/NAME [--branch main]

sets `REPO` in each notebook's install cell (the cell then clones the
repository instead of needing an upload) and puts an "Open in Colab" link at
the top of each notebook. Run it again with another address to change both;
`--repo ''` removes them (the upload path, the default, stays either way).
"""

import glob
import json
import os
import re

from alexnet_jax import cli

HERE = os.path.dirname(os.path.abspath(__file__))
BADGE = re.compile(r'\[Open in Colab\]\([^)]*\)\n\n')
REPO_LINE = re.compile(r"^REPO = '[^']*'", re.M)


def _lines(text):
  out = text.split('\n')
  return [l + '\n' for l in out[:-1]] + [out[-1]]


def set_repo(path: str, repo: str, branch: str = 'main'):
  """Sets one notebook's REPO and its Open in Colab link (none for '')."""
  with open(path) as f:
    book = json.load(f)
  repo = re.sub(r'^(https?://)?(www\.)?', '', repo).rstrip('/')
  repo = re.sub(r'\.git$', '', repo)
  if repo and not re.fullmatch(r'github\.com/[\w.-]+/[\w.-]+', repo):
    raise SystemExit(f'experiments.colab_links: error: --repo {repo!r}: use '
                     'github.com/ORG/NAME (Colab opens notebooks from GitHub).')
  cells = [c for c in book['cells'] if c['cell_type'] == 'code' and
           'ALEXNET_JAX_SRC' in ''.join(c['source'])]
  if len(cells) != 1 or book['cells'][0]['cell_type'] != 'markdown':
    raise SystemExit(f'experiments.colab_links: error: {path} has no install '
                     'cell after a markdown title.')
  source = ''.join(cells[0]['source'])
  url = f'https://{repo}' if repo else ''
  cells[0]['source'] = _lines(REPO_LINE.sub(f"REPO = '{url}'", source, 1))
  title = BADGE.sub('', ''.join(book['cells'][0]['source']))
  if repo:
    owner_name = repo[len('github.com/'):]
    title = (f'[Open in Colab](https://colab.research.google.com/github/'
             f'{owner_name}/blob/{branch}/experiments/'
             f'{os.path.basename(path)})\n\n') + title
  book['cells'][0]['source'] = _lines(title)
  with open(path, 'w') as f:
    json.dump(book, f, indent=1, sort_keys=True, ensure_ascii=False)
    f.write('\n')


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m experiments.colab_links',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--repo', required=True,
                      help="github.com/ORG/NAME, or '' to remove")
  parser.add_argument('--branch', default='main')
  parser.add_argument('--notebooks', default=HERE,
                      help='folder of the notebooks (default experiments/)')
  args = parser.parse_args(argv)
  paths = sorted(glob.glob(os.path.join(args.notebooks, '*.ipynb')))
  for path in paths:
    set_repo(path, args.repo, args.branch)
  print(f'{len(paths)} notebooks: REPO = {args.repo!r}')


if __name__ == '__main__':
  cli.run_main(main, 'experiments.colab_links')
