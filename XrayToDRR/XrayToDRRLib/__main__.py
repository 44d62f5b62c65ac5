from XrayToDRRLib.cli import main

main()
