import sys

from bbt_jax.cli import main

sys.exit(main())
