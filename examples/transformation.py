"""Run the bundled ``transformation`` demo (``coupler.demos.transformation``) from a checkout.

The demo itself ships inside the package, so an installed wheel runs it as
``coupler demo transformation``; this script is the same run for ``python examples/transformation.py``.
``--help`` lists its options, ``--quick`` makes it a small smoke run.
"""

import sys

from coupler.demos.transformation import main

if __name__ == "__main__":  # the local cluster spawns workers, which re-import this file
    main(sys.argv[1:])
