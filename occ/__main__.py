from occ.cli import main

raise SystemExit(main())
