using System.Text.Json;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary><c>lsm hosts</c>: the hosts with their cluster status; the one that runs the SPM now is marked.</summary>
public sealed class HostsCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var hosts = (await api.GetAsync("/api/hosts", ct)).Json;
        var cluster = (await api.GetAsync("/api/cluster", ct)).Json;
        var statusByAddress = cluster.Array("members").ToDictionary(m => m.Str("address"), m => m.Bool("reachable") ? m.Str("status") : m.Str("status") + " (unreachable)");
        var rows = hosts.Array("hosts").ToList();
        string Status(JsonElement h) => statusByAddress.GetValueOrDefault(h.Str("address"), "not a member");
        if (settings.Json)
        {
            // The API's fields plus the cluster's view of each host (hostId kept for scripts written against earlier versions).
            Output.Json(new
            {
                hosts = rows.Select(h => new
                {
                    id = h.Str("id"), hostId = h.Str("id"), address = h.Str("address"), spmCapable = h.Bool("spmCapable"), spm = h.Bool("spm"),
                    memberStatus = Status(h), vms = h.Long("vms"), lastReport = h.Str("lastReport"),
                }),
            });
            return ExitCodes.Ok;
        }
        var table = new Table().AddColumns("Host", "Address", "SPM", "Member", "VMs", "Last report");
        foreach (var h in rows)
        {
            var status = Status(h);
            table.AddRow(Output.Escape(h.Str("id")), Output.Escape(h.Str("address")),
                h.Bool("spm") ? "[bold green]SPM[/]" : h.Bool("spmCapable") ? "capable" : "no",
                status == "up" ? "[green]up[/]" : $"[yellow]{Output.Escape(status)}[/]", h.Long("vms").ToString(), Output.Escape(h.Str("lastReport")));
        }
        Output.Console.Write(table);
        if (rows.Count == 0) Output.Console.MarkupLine("no host has reported yet");
        else if (!rows.Any(h => h.Bool("spm"))) Output.Console.MarkupLine("[yellow]no host runs the SPM now[/] (storage changes wait for one)");
        return ExitCodes.Ok;
    }
}

/// <summary><c>lsm domains</c>: the storage domains with their capacity, used and free space.</summary>
public sealed class DomainsCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var response = await api.GetAsync("/api/domains", ct);
        if (settings.Json)
        {
            Output.Json(response.Text);
            return ExitCodes.Ok;
        }
        var domains = response.Json.Array("domains").ToList();
        var table = new Table().AddColumns("Name", "Id", "Kind", "Capacity", "Used", "Free", "Active");
        foreach (var d in domains)
            table.AddRow(Output.Escape(d.Str("name")), Output.Escape(d.Str("id")), Output.Escape(d.Str("kind")),
                ByteRate.Format(d.Long("capacityBytes")), ByteRate.Format(d.Long("usedBytes")), ByteRate.Format(d.Long("availableBytes")),
                d.Bool("active") ? "yes" : "[red]no[/]" + Unreachable(d));
        Output.Console.Write(table);
        if (domains.Count == 0) Output.Console.MarkupLine("no storage domains reported yet (lsm domain create NAME --path DIR)");
        return ExitCodes.Ok;
    }

    /// <summary>The hosts that cannot reach an inactive domain, as " (not reachable from host-2)", or nothing when none are named.</summary>
    private static string Unreachable(JsonElement domain)
    {
        var hosts = domain.Array("unreachableFrom").Select(h => h.GetString() ?? "").ToList();
        return hosts.Count == 0 ? "" : Output.Escape($" (not reachable from {string.Join(", ", hosts)})");
    }
}

/// <summary><c>lsm vms</c>: every VM with its host, state, and where its disks are.</summary>
public sealed class VmsCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var response = await api.GetAsync("/api/vms", ct);
        if (settings.Json)
        {
            Output.Json(response.Text);
            return ExitCodes.Ok;
        }
        var names = await DomainNames.LoadAsync(api, ct);
        var vms = response.Json.Array("vms").ToList();
        var table = new Table().AddColumns("Name", "Id", "Host", "Running", "Disk (image)", "Size", "Allocated", "On domain", "Layers", "Migration");
        foreach (var vm in vms)
        {
            var first = true;
            foreach (var disk in vm.Array("disks").Select(d => (JsonElement?)d).DefaultIfEmpty())
            {
                var d = disk ?? default;
                table.AddRow(
                    first ? Output.Escape(vm.Str("name")) : "", first ? Output.Escape(vm.Str("id")) : "", first ? Output.Escape(vm.Str("host")) : "",
                    first ? (vm.Bool("running") ? "[green]yes[/]" : "no") : "",
                    Output.Escape(d.Str("image")),
                    disk is null ? "" : ByteRate.Format(d.Long("capacityBytes")),
                    disk is null ? "" : ByteRate.Format(d.Long("allocatedBytes")),
                    // a disk whose chain its host could not resolve has no domain: say why instead
                    d.Str("problem") is { Length: > 0 } problem ? $"[red]{Output.Escape(problem)}[/]" : names.PlaceOf(d),
                    disk is null ? "" : d.Array("chain").Count().ToString(),
                    Output.Escape(d.Str("migration")));
                first = false;
            }
        }
        Output.Console.Write(table);
        if (vms.Count == 0) Output.Console.MarkupLine("no VMs reported by any host (lsm vm create NAME --host HOST --disk 1GiB@DOMAIN)");
        return ExitCodes.Ok;
    }
}

/// <summary>Domain ids to names, for tables.</summary>
public sealed class DomainNames(IReadOnlyDictionary<string, string> byId)
{
    public string Of(string id) => id.Length == 0 ? "" : byId.GetValueOrDefault(id, id);

    /// <summary>Its name, else the first 8 characters of its id (as a narrow column prints ids).</summary>
    public string ShortOf(string id) => byId.TryGetValue(id, out var name) ? name : id[..Math.Min(8, id.Length)];

    /// <summary>
    /// A disk's place for a table (markup): its leaf's domain, and the others its chain lies on (an abandoned post-copy's
    /// split chain, which only a post-copy to the leaf's domain moves: `lsm migrate` names it).
    /// </summary>
    public string PlaceOf(JsonElement disk)
    {
        var leaf = disk.Str("domain");
        var others = disk.Array("chain").Select(l => l.Str("domain")).Where(d => d.Length > 0 && d != leaf).Distinct().Select(Of).ToList();
        return others.Count == 0
            ? Output.Escape(Of(leaf))
            : $"{Output.Escape(Of(leaf))} [yellow](split: older layers on {Output.Escape(string.Join(", ", others))})[/]";
    }

    public static async Task<DomainNames> LoadAsync(LsmApiClient api, CancellationToken ct)
    {
        var domains = (await api.GetAsync("/api/domains", ct)).Json.Array("domains");
        // ids compared as UUIDs are: whatever their letters' case
        return new DomainNames(domains.GroupBy(d => d.Str("id"), StringComparer.OrdinalIgnoreCase)
            .ToDictionary(g => g.Key, g => g.First().Str("name"), StringComparer.OrdinalIgnoreCase));
    }
}

/// <summary>
/// The names of the VMs a list of migrations names by id. A courtesy: a VM the inventory no longer has (or a refused
/// lookup) keeps its id, which still says which VM it is.
/// </summary>
public sealed class VmNames(IReadOnlyDictionary<string, string> byId)
{
    /// <summary>At most this many VMs are looked up one by one; more are read from one page of the whole list.</summary>
    private const int AskedAlone = 8;

    public string Of(string id) => byId.TryGetValue(id, out var name) && name.Length > 0 ? name : id;

    /// <summary>"name (id)" when the name is known, else the id.</summary>
    public string WithId(string id) => byId.TryGetValue(id, out var name) && name.Length > 0 ? $"{name} ({id})" : id;

    public static async Task<VmNames> LoadAsync(LsmApiClient api, IEnumerable<string> ids, CancellationToken ct)
    {
        var wanted = ids.Where(id => id.Length > 0).ToHashSet(StringComparer.OrdinalIgnoreCase);
        var names = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        // false: the API did not answer as it should (not a VM gone since, which is a 404): ask no more
        async Task<bool> ReadAsync(string path, Func<JsonElement, IEnumerable<JsonElement>> vms)
        {
            try
            {
                foreach (var vm in vms((await api.GetAsync(path, ct)).Json)) names[vm.Str("id")] = vm.Str("name");
                return true;
            }
            catch (CliFailure e) when (e.Message.Contains(": 404 "))
            {
                return true; // that VM is gone: its id stands
            }
            catch (Exception e) when (e is CliFailure or HttpRequestException)
            {
                return false; // names are a courtesy: what was asked for is shown with ids
            }
        }
        if (wanted.Count <= AskedAlone)
        {
            foreach (var id in wanted)
                if (!await ReadAsync($"/api/vms/{Uri.EscapeDataString(id)}", vm => [vm])) break;
        }
        else
            await ReadAsync("/api/vms?limit=5000", list => list.Array("vms"));
        return new VmNames(names);
    }
}
