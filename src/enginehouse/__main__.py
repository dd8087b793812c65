from enginehouse.cli.main import main

main()
