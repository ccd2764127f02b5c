"""Other VPNs the overlay is compared with, each between the two namespaces of a lab pair at its defaults."""
