"""``python -m components.aws.local_front``: see :mod:`components.aws.local_front.cli`."""

from components.aws.local_front.cli import main

raise SystemExit(main())
