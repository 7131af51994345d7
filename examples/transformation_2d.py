"""Run the bundled ``transformation_2d`` demo (``coupler.demos.transformation_2d``) from a checkout.

The demo itself ships inside the package, so an installed wheel runs it as
``coupler demo transformation_2d``; this script is the same run for ``python examples/transformation_2d.py``.
``--help`` lists its options, ``--quick`` makes it a small smoke run.
"""

import sys

from coupler.demos.transformation_2d import main

if __name__ == "__main__":  # the local cluster spawns workers, which re-import this file
    main(sys.argv[1:])
