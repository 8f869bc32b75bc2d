"""Order router: Digitex order commands off the bus, validated, risk-checked, routed, tracked."""
