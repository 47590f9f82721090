import sys

from wsq_gateway.cli import main

sys.exit(main())
