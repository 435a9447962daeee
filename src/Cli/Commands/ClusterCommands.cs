using System.ComponentModel;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary><c>lsm cluster show</c>: every member with its status and roles, the leader, the unreachable ones.</summary>
public sealed class ClusterShowCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var cluster = await api.GetAsync("/api/cluster", ct);
        if (settings.Json)
        {
            Output.Json(cluster.Text);
            return ExitCodes.Ok;
        }
        var json = cluster.Json;
        var table = new Table().AddColumns("Address", "Status", "Roles", "Reachable", "");
        foreach (var m in json.Array("members"))
        {
            var address = m.Str("address");
            var notes = new List<string>();
            if (address == json.Str("leader")) notes.Add("leader");
            if (address == json.Str("self")) notes.Add("API node");
            var status = m.Str("status");
            table.AddRow(
                Output.Escape(address),
                status == "up" ? $"[green]{status}[/]" : $"[yellow]{Output.Escape(status)}[/]",
                Output.Escape(string.Join(",", m.Array("roles").Select(r => r.GetString()))),
                m.Bool("reachable") ? "yes" : "[red]no[/]",
                string.Join(", ", notes));
        }
        Output.Console.Write(table);
        var unreachable = json.Array("unreachable").Select(u => u.GetString()).ToList();
        Output.Console.MarkupLine(unreachable.Count == 0
            ? "no unreachable members"
            : $"[red]unreachable:[/] {Output.Escape(string.Join(", ", unreachable))}");
        return ExitCodes.Ok;
    }
}

public sealed class ClusterAddressSettings : GlobalSettings
{
    [CommandArgument(0, "<ADDRESS>")]
    [Description("A member's address, as `lsm cluster show` lists it: akka.ssl.tcp://lsm@127.0.0.1:4053 (akka.tcp:// on a cluster without TLS)")]
    public string Address { get; set; } = "";

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        // The API's rule, checked before any request as far as lsm can: an lsm address of either protocol (the API knows
        // which one its cluster speaks and refuses the other).
        return Uri.TryCreate(Address, UriKind.Absolute, out var uri) && uri.Scheme is "akka.tcp" or "akka.ssl.tcp" && uri.UserInfo == "lsm" && uri.Port > 0 && uri.AbsolutePath is "" or "/"
            ? ValidationResult.Success()
            : ValidationResult.Error($"'{Address}' is not a member address like akka.ssl.tcp://lsm@127.0.0.1:4053 (akka.tcp:// on a cluster without TLS)");
    }
}

/// <summary>leave, down and join: one POST each to /api/cluster/{action} with the member's address.</summary>
public abstract class ClusterMembershipCommand(string action) : AsyncCommand<ClusterAddressSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, ClusterAddressSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var answer = await api.PostAsync($"/api/cluster/{action}", new { address = settings.Address }, ct);
        if (settings.Json) Output.Json(answer.Text);
        else Output.Console.MarkupLine(Output.Escape(answer.Json.Str("message")));
        return ExitCodes.Ok;
    }
}

public sealed class ClusterLeaveCommand() : ClusterMembershipCommand("leave");

public sealed class ClusterDownCommand() : ClusterMembershipCommand("down");

public sealed class ClusterJoinCommand() : ClusterMembershipCommand("join");

/// <summary><c>lsm cluster sharding regions</c>: the shard region types with their shard and entity counts per node.</summary>
public sealed class ShardingRegionsCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var regions = await api.GetAsync("/api/cluster/sharding/regions", ct);
        if (settings.Json)
        {
            Output.Json(regions.Text);
            return ExitCodes.Ok;
        }
        var table = new Table().AddColumns("Type", "Node", "Shards", "Entities");
        foreach (var r in regions.Json.Array("regions"))
        {
            var type = Output.Escape(r.Str("typeName"));
            if (r.Str("error") is { Length: > 0 } error)
            {
                table.AddRow(type, $"[red]{Output.Escape(error)}[/]", "", "");
                continue;
            }
            table.AddRow($"[bold]{type}[/]", "all", r.Long("shards").ToString(), r.Long("entities").ToString());
            foreach (var n in r.Array("nodes"))
                table.AddRow("", Output.Escape(n.Str("address")), n.Long("shards").ToString(), n.Long("entities").ToString());
        }
        Output.Console.Write(table);
        return ExitCodes.Ok;
    }
}

/// <summary><c>lsm cluster down-unreachable</c>: marks every member the API's node sees as unreachable down.</summary>
public sealed class ClusterDownUnreachableCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var answer = await api.PostAsync("/api/cluster/down-unreachable", null, ct);
        if (settings.Json)
        {
            Output.Json(answer.Text);
            return ExitCodes.Ok;
        }
        var downed = answer.Json.Array("downed").Select(a => a.GetString() ?? "").ToList();
        if (downed.Count == 0) Output.Console.WriteLine("no unreachable members; nothing downed");
        foreach (var address in downed) Output.Console.WriteLine($"down requested: {address}");
        return ExitCodes.Ok;
    }
}

public sealed class ClusterTailSettings : GlobalSettings
{
    [CommandOption("--seconds <N>")]
    [Description("Stop after N seconds (default: until Ctrl+C). Example: --seconds 30")]
    public int? Seconds { get; set; }

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        return Seconds is null or > 0 ? ValidationResult.Success() : ValidationResult.Error($"--seconds must be a positive number, got {Seconds}");
    }
}

/// <summary>
/// <c>lsm cluster tail</c>: the members as they are (as events), then every membership and reachability change as it
/// happens, until Ctrl+C or --seconds; one line per event, or the event's JSON per line with --json.
/// </summary>
public sealed class ClusterTailCommand : AsyncCommand<ClusterTailSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, ClusterTailSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        using var until = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (settings.Seconds is { } seconds) until.CancelAfter(TimeSpan.FromSeconds(seconds));
        try
        {
            await foreach (var (name, data) in api.StreamAsync("/api/cluster/events", until.Token))
            {
                if (name != "member") continue;
                if (settings.Json)
                {
                    Output.Json(data);
                    continue;
                }
                var e = System.Text.Json.JsonDocument.Parse(data).RootElement;
                var at = DateTimeOffset.TryParse(e.Str("at"), System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.None, out var t)
                    ? t.UtcDateTime.ToString("HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture)
                    : e.Str("at");
                var roles = string.Join(",", e.Array("roles").Select(r => r.GetString()));
                Output.Console.MarkupLine($"{at} [bold]{Output.Escape(e.Str("type"))}[/] {Output.Escape(e.Str("address"))} {Output.Escape(e.Str("status"))} {Output.Escape(roles)}");
            }
            Output.Error("the Coordinator closed the event stream");
            return ExitCodes.OperationFailed;
        }
        catch (OperationCanceledException) when (until.IsCancellationRequested)
        {
            // --seconds ran out or Ctrl+C: the normal end of a tail.
            return ExitCodes.Ok;
        }
    }
}

public sealed class RegionStatsSettings : GlobalSettings
{
    [CommandArgument(0, "<TYPE>")]
    [Description("The shard region's type name, as `lsm cluster sharding regions` lists it (e.g. migration)")]
    public string TypeName { get; set; } = "";
}

/// <summary><c>lsm cluster sharding region-stats TYPE</c>: per node, every shard of the region with its entity count.</summary>
public sealed class ShardingRegionStatsCommand : AsyncCommand<RegionStatsSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, RegionStatsSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var stats = await api.GetAsync($"/api/cluster/sharding/regions/{Uri.EscapeDataString(settings.TypeName)}/stats", ct);
        if (settings.Json)
        {
            Output.Json(stats.Text);
            return ExitCodes.Ok;
        }
        var table = new Table().AddColumns("Node", "Shard", "Entities");
        foreach (var node in stats.Json.Array("nodes"))
        {
            var shards = node.Array("shards").ToList();
            table.AddRow($"[bold]{Output.Escape(node.Str("address"))}[/]", $"{shards.Count} shard{(shards.Count == 1 ? "" : "s")}",
                shards.Sum(s => s.Long("entities")).ToString());
            foreach (var shard in shards)
                table.AddRow("", Output.Escape(shard.Str("shardId")), shard.Long("entities").ToString());
        }
        Output.Console.Write(table);
        return ExitCodes.Ok;
    }
}
