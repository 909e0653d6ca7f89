from chaosbed.cli import main

raise SystemExit(main())
