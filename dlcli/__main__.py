from dlcli.commands.cli import main

main()
