from onnxport.cli import main

raise SystemExit(main())
