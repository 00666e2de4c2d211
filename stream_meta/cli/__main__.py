import sys

from stream_meta.cli.main import main

sys.exit(main())
