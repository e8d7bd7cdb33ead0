import sys

from buildpy.entry import main

sys.exit(main())
