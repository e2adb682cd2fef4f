"""Entry point of a sweep submitted to a Ray cluster with `ray job submit`.

The working directory (this repository) is shipped with the job; the package is
installed from it into the job's environment by the runtime_env (see README.md).
Results are written under the job's working directory on the head node and
listed at the end, so `ray job logs` shows where they are.
"""

import sys

from iommu_core.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
