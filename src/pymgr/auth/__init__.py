"""Who is calling: peer credentials and signatures."""
