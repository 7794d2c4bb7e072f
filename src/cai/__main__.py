from cai.cli import main

main()
