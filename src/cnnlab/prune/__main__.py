from cnnlab.prune.cli import main

main()
