"""Make `import sync` find the real package, not this directory.

tests/conftest.py puts tests/ on sys.path, where this folder looks like a namespace
package called `sync` that wins over the editable install's finder. Putting the
repository root first restores the real package. (A `pythonpath = ["."]` entry in
the pytest configuration would make this unnecessary.)
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)
_mod = sys.modules.get("sync")
if _mod is not None and getattr(_mod, "__file__", None) is None:
    for _name in [n for n in sys.modules if n == "sync" or n.startswith("sync.")]:
        del sys.modules[_name]
