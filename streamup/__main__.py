from streamup.cli import main

raise SystemExit(main())
