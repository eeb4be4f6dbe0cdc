"""`python -m das_lib.book execute|stage`: the chapter runner (das_lib.book.execute)."""
import sys

from das_lib.book.execute import main

sys.exit(main())
