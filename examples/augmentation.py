"""Run the bundled ``augmentation`` demo (``coupler.demos.augmentation``) from a checkout.

The demo itself ships inside the package, so an installed wheel runs it as
``coupler demo augmentation``; this script is the same run for ``python examples/augmentation.py``.
``--help`` lists its options, ``--quick`` makes it a small smoke run.
"""

import sys

from coupler.demos.augmentation import main

if __name__ == "__main__":  # the local cluster spawns workers, which re-import this file
    main(sys.argv[1:])
