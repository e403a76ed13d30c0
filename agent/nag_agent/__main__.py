import sys

from nag_agent.cli import main

sys.exit(main())
