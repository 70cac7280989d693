"""`python -m enhrec_wrap` runs the wrapper."""

from enhrec_wrap.cli import main

main()
