"""Run the bundled ``live_stream`` demo (``coupler.demos.live_stream``) from a checkout.

The demo itself ships inside the package, so an installed wheel runs it as
``coupler demo live_stream``; this script is the same run for ``python examples/live_stream.py``.
``--help`` lists its options, ``--quick`` makes it a small smoke run.
"""

import sys

from coupler.demos.live_stream import main

if __name__ == "__main__":  # the local cluster spawns workers, which re-import this file
    main(sys.argv[1:])
