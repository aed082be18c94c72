from reflectrl.cli import main

main()
