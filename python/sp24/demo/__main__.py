"""`python -m sp24.demo`: see sp24.demo."""

from . import main

main()
