import sys

from nag.server.app import main

sys.exit(main())
