INSERT INTO bank.loans VALUES (1, 2, 3)
