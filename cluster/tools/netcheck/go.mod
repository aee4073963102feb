module kubefaas.local/cluster/tools/netcheck

go 1.26.0
