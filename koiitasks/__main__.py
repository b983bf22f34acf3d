"""``python -m koiitasks``: the same as the ``koiitasks`` command."""

from koiitasks.cli import main

main()
