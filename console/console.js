// keygate console
