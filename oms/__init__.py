"""OMS, the Output Management System: document requests in, Thunderhead jobs out."""
