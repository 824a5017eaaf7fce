"""Second readings (L2) of organised breast-cancer screening tracked as cases: opened when
the d2lm routing preset sends an interpretation form to a CRCDC, closed when the CRCDC's L2
result for the same form comes back (docs/operator-guide.md, "Second reading (L2)")."""
