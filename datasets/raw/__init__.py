"""The raw Stanford Cars releases: finding their layout, reading annotations and archives, preparing train/ and test/
folders with labels CSVs, and generating small datasets in the same raw formats (the tests' and the demo's)."""
