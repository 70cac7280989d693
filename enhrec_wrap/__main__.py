"""`python -m enhrec_wrap` runs the wrapper."""

from enhrec_wrap.cli.wrap import main

main()
