from ipsecemu.cli import main

main()
