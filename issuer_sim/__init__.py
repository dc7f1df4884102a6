"""An issuer host simulator that behaves like a real issuer on the issuer link."""
