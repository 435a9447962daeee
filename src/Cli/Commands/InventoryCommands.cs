using System.Text.Json;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary><c>lsm hosts</c>: the hosts the inventory knows, with their cluster membership status.</summary>
public sealed class HostsCommand : AsyncCommand<GlobalSettings>
{
    public sealed record HostRow(string HostId, string Address, bool SpmCapable, string MemberStatus, int Vms, string LastReport);

    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var inventory = (await api.GetAsync("/api/inventory", ct)).Json;
        var cluster = (await api.GetAsync("/api/cluster", ct)).Json;
        var statusByAddress = cluster.Array("members").ToDictionary(m => m.Str("address"), m => m.Bool("reachable") ? m.Str("status") : m.Str("status") + " (unreachable)");
        var rows = inventory.Array("hosts")
            .Select(h => new HostRow(h.Str("hostId"), h.Str("address"), h.Bool("spmCapable"),
                statusByAddress.GetValueOrDefault(h.Str("address"), "not a member"),
                inventory.Array("vms").Count(v => v.Str("hostId") == h.Str("hostId")),
                h.Str("lastReport")))
            .OrderBy(h => h.HostId, StringComparer.Ordinal)
            .ToList();
        if (settings.Json)
        {
            Output.Json(new { hosts = rows.Select(r => new { hostId = r.HostId, address = r.Address, spmCapable = r.SpmCapable, memberStatus = r.MemberStatus, vms = r.Vms, lastReport = r.LastReport }) });
            return ExitCodes.Ok;
        }
        var table = new Table().AddColumns("Host", "Address", "SPM-capable", "Member", "VMs", "Last report");
        foreach (var r in rows)
            table.AddRow(Output.Escape(r.HostId), Output.Escape(r.Address), r.SpmCapable ? "yes" : "no",
                r.MemberStatus == "up" ? "[green]up[/]" : $"[yellow]{Output.Escape(r.MemberStatus)}[/]", r.Vms.ToString(), Output.Escape(r.LastReport));
        Output.Console.Write(table);
        return ExitCodes.Ok;
    }
}

/// <summary><c>lsm domains</c>: the storage domains as the SPM reported them.</summary>
public sealed class DomainsCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var inventory = (await api.GetAsync("/api/inventory", ct)).Json;
        var domains = inventory.Array("domains").OrderBy(d => d.Str("name"), StringComparer.Ordinal).ToList();
        if (settings.Json)
        {
            Output.Json(new { domains });
            return ExitCodes.Ok;
        }
        var table = new Table().AddColumns("Id", "Name", "Kind", "Capacity", "Used", "Available", "Active");
        foreach (var d in domains)
            table.AddRow(Output.Escape(d.Str("id")), Output.Escape(d.Str("name")), Output.Escape(d.Str("kind")),
                ByteRate.Format(d.Long("capacityBytes")), ByteRate.Format(d.Long("usedBytes")), ByteRate.Format(d.Long("availableBytes")),
                d.Bool("active") ? "yes" : "[red]no[/]");
        Output.Console.Write(table);
        if (domains.Count == 0) Output.Console.MarkupLine("no storage domains reported yet (the SPM reports them when it starts)");
        return ExitCodes.Ok;
    }
}

/// <summary><c>lsm vms</c>: every VM with its disks and where each layer of their chains lives.</summary>
public sealed class VmsCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var inventory = (await api.GetAsync("/api/inventory", ct)).Json;
        var vms = inventory.Array("vms").ToList();
        if (settings.Json)
        {
            Output.Json(new { vms });
            return ExitCodes.Ok;
        }
        var domainNames = inventory.Array("domains").ToDictionary(d => d.Str("id"), d => d.Str("name"));
        string DomainName(string id) => domainNames.GetValueOrDefault(id, id);
        var table = new Table().AddColumns("VM", "Name", "Host", "Running", "Disk (image)", "Size", "Allocated", "On domain", "Chain (base → leaf)");
        foreach (var entry in vms.OrderBy(v => v.Obj("vm").Str("name"), StringComparer.Ordinal))
        {
            var vm = entry.Obj("vm");
            var drives = vm.Array("drives").ToList();
            var first = true;
            foreach (var drive in drives.DefaultIfEmpty())
            {
                var chain = drive.Array("chain").Select(l => DomainName(l.Str("domain"))).ToList();
                table.AddRow(
                    first ? Output.Escape(vm.Str("id")) : "", first ? Output.Escape(vm.Str("name")) : "", first ? Output.Escape(entry.Str("hostId")) : "",
                    first ? (vm.Bool("running") ? "[green]yes[/]" : "no") : "",
                    Output.Escape(drive.Str("image")),
                    drive.ValueKind == JsonValueKind.Object ? ByteRate.Format(drive.Long("capacityBytes")) : "",
                    drive.ValueKind == JsonValueKind.Object ? ByteRate.Format(drive.Long("allocatedBytes")) : "",
                    chain.Count > 0 ? Output.Escape(chain[^1]) : "",
                    Output.Escape(string.Join(" → ", chain)));
                first = false;
            }
        }
        Output.Console.Write(table);
        if (vms.Count == 0) Output.Console.MarkupLine("no VMs reported by any host");
        return ExitCodes.Ok;
    }
}
