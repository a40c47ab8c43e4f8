from dffs.cli.main import main

main()
