using System.ComponentModel;
using System.Text.Json;
using LiveMigration.Cli.Api;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

public sealed class MigrateSettings : GlobalSettings
{
    [CommandArgument(0, "<VM>")]
    [Description("The VM's id or its name (as `lsm vms` lists them)")]
    public string Vm { get; set; } = "";

    [CommandOption("--to <DOMAIN>")]
    [Description("The destination storage domain: its id or its name (as `lsm domains` lists them)")]
    public string? To { get; set; }

    [CommandOption("--disk <IMAGE>")]
    [Description("An image id to move; repeat for several. Default: every disk of the VM")]
    public string[] Disks { get; set; } = [];

    [CommandOption("--strategy <STRATEGY>")]
    [Description("pre-copy (copy, then switch; the default) or post-copy (switch first, then copy)")]
    [DefaultValue("pre-copy")]
    public string Strategy { get; set; } = "pre-copy";

    [CommandOption("--bandwidth <RATE>")]
    [Description("Copy speed limit, e.g. 100MiB/s or 512k; 0 = unlimited (the default)")]
    [DefaultValue("0")]
    public string Bandwidth { get; set; } = "0";

    [CommandOption("--copy-mode <MODE>")]
    [Description("background (the default; a mirror the guest outruns is started again write-blocking by its host) or write-blocking (guest writes reach both copies; the mirror always converges)")]
    [DefaultValue("background")]
    public string CopyMode { get; set; } = "background";

    [CommandOption("--parallel-disks <N>")]
    [Description("How many of the VM's disks move at once (1-64; 1, one after the other, is the default); the disks moving at once share --bandwidth")]
    [DefaultValue("1")]
    public string ParallelDisks { get; set; } = "1";

    [CommandOption("--wait")]
    [Description("Show a progress bar per disk until the migration ends; exit 0 only when it completed")]
    public bool Wait { get; set; }

    public int MaxParallelDisks => int.TryParse(ParallelDisks, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) ? n : 0;

    public long BandwidthBytesPerSecond => ByteRate.TryParse(Bandwidth, out var b) ? b : 0;

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        if (string.IsNullOrWhiteSpace(Vm))
            return ValidationResult.Error("VM is required: the VM's id or name, as `lsm vms` lists them");
        if (string.IsNullOrWhiteSpace(To))
            return ValidationResult.Error("--to DOMAIN is required: the destination storage domain's id or name");
        if (Disks.FirstOrDefault(d => !UuidText.TryParse(d, out _)) is { } badDisk)
            return ValidationResult.Error($"--disk must be an image id (a UUID), got '{badDisk}'");
        if (Strategy is not ("pre-copy" or "post-copy"))
            return ValidationResult.Error($"--strategy must be pre-copy or post-copy, got '{Strategy}'");
        if (CopyMode is not ("background" or "write-blocking"))
            return ValidationResult.Error($"--copy-mode must be background or write-blocking, got '{CopyMode}'");
        if (!ByteRate.TryParse(Bandwidth, out _))
            return ValidationResult.Error($"--bandwidth '{Bandwidth}' is not a rate like 100MiB/s, 512k or 0 (unlimited)");
        if (MaxParallelDisks is < 1 or > 64)
            return ValidationResult.Error($"--parallel-disks must be a whole number from 1 to 64, got '{ParallelDisks}'");
        return ValidationResult.Success();
    }
}

/// <summary><c>lsm migrate</c>: starts moving a VM's disks and, with --wait, follows it to the end.</summary>
public sealed class MigrateCommand : AsyncCommand<MigrateSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, MigrateSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var destination = settings.To!;
        // The VM by id or name (the API resolves a unique name), and by default every disk it has.
        var vm = (await api.GetAsync($"/api/vms/{Uri.EscapeDataString(settings.Vm)}", ct)).Json;
        var vmId = vm.Str("id");
        var disks = settings.Disks.Length > 0 ? settings.Disks.ToList() : vm.Array("disks").Select(d => d.Str("image")).ToList();
        if (disks.Count == 0) throw CliFailure.BadUsage($"VM {settings.Vm} has no disks");
        if (!UuidText.TryParse(destination, out _))
        {
            var named = (await api.GetAsync("/api/domains", ct)).Json.Array("domains").Where(d => d.Str("name") == destination).ToList();
            if (named.Count != 1)
                throw CliFailure.BadUsage(named.Count == 0
                    ? $"no storage domain named '{destination}' (lsm domains lists them)"
                    : $"{named.Count} storage domains are named '{destination}'; give its id");
            destination = named[0].Str("id");
        }

        // A disk already on the destination is not moved again (after a move that failed part-way, the rest still can be):
        // it is skipped and named. A disk with no domain (its chain unresolved) is left to the API, which says why.
        // (its whole chain: a disk whose older layers are elsewhere is left to the API, which says why it cannot move)
        var onDestination = vm.Array("disks")
            .Where(d => d.Str("domain") is { Length: > 0 } domain && string.Equals(domain, destination, StringComparison.OrdinalIgnoreCase)
                        && d.Array("chain").All(layer => string.Equals(layer.Str("domain"), destination, StringComparison.OrdinalIgnoreCase)))
            .Select(d => d.Str("image"))
            .ToHashSet(StringComparer.OrdinalIgnoreCase);
        var skipped = disks.Where(onDestination.Contains).ToList();
        disks = disks.Where(d => !onDestination.Contains(d)).ToList();
        if (disks.Count == 0)
        {
            // Nothing to do is the state asked for: exit 0, so a script may repeat a move.
            if (settings.Json) Output.Json(new { id = (string?)null, vm = vmId, destination, moved = Array.Empty<string>(), skipped });
            else Output.Console.WriteLine($"every disk of VM {settings.Vm} asked for is on {settings.To} already ({string.Join(", ", skipped)}): nothing to move");
            return ExitCodes.Ok;
        }
        if (!settings.Json)
            foreach (var image in skipped) Output.Console.WriteLine($"skipped disk {image}: it is on {settings.To} already");

        var body = new
        {
            vm = vmId,
            disks = disks.Select(image => new { image, destination }).ToList(),
            strategy = settings.Strategy,
            bandwidthBytesPerSecond = settings.BandwidthBytesPerSecond,
            copyMode = settings.CopyMode,
            maxParallelDisks = settings.MaxParallelDisks,
        };
        var started = await api.PostAsync("/api/migrations", body, ct);
        var id = started.Json.Str("id");
        if (!settings.Wait)
        {
            if (settings.Json) Output.Json(started.Text);
            else Output.Console.WriteLine($"migration {id} started ({disks.Count} disk{(disks.Count == 1 ? "" : "s")} → {destination}); follow it with: lsm migration show {id}");
            return ExitCodes.Ok;
        }
        if (!settings.Json) Output.Console.WriteLine($"migration {id} started");
        var final = await MigrationWatch.FollowAsync(api, id, showProgress: !settings.Json, ct);
        if (settings.Json) Output.Json(final.Text);
        else await MigrationView.WriteAsync(api, final.Json, ct);
        return final.Json.Str("status") == "completed" ? ExitCodes.Ok : ExitCodes.OperationFailed;
    }
}

/// <summary>
/// Follows a migration through its event stream until it ends or suspends (then the operator decides: resume or
/// abandon), drawing a bar per disk on a terminal and a line per change when piped.
/// </summary>
public static class MigrationWatch
{
    public static bool HasEnded(JsonElement migration) =>
        migration.Bool("finished") || migration.Str("status").StartsWith("suspended", StringComparison.Ordinal);

    public static async Task<ApiResponse> FollowAsync(LsmApiClient api, string id, bool showProgress, CancellationToken ct)
    {
        // Reconnects when the Coordinator restarts under it, as `lsm migration watch` does.
        var stream = new MigrationEventStream(api, id) { OnConnectionLost = Output.Error };
        if (showProgress && Output.Console.Profile.Capabilities.Interactive)
            await MigrationWatchCommand.WithProgressBarsAsync(stream, ct, until: HasEnded);
        else
            await stream.ForEachAsync(e => { if (showProgress) MigrationWatchCommand.WriteLine(e.Json); }, ct, until: HasEnded);
        // The stream's last event, read again whole: also when the connection broke off, this says where it is.
        var state = await stream.StateAsync(ct);
        if (!HasEnded(state.Json))
            throw new CliFailure(ExitCodes.ApiUnreachable,
                $"the event stream of migration {id} ended before the migration did; `lsm migration watch {id}` follows it on");
        return state;
    }
}

public class MigrationIdSettings : GlobalSettings
{
    private const int MinPrefix = 4;
    private const int PageSize = 5000;

    [CommandArgument(0, "<ID>")]
    [Description("The migration's id (a UUID, as `lsm migrate` printed it), or its first characters (at least 4) when only one migration's id begins so")]
    public string Id { get; set; } = "";

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        return UuidText.TryParse(Id, out _) || IsPrefix(Id)
            ? ValidationResult.Success()
            : ValidationResult.Error($"migration id must be a UUID like 2f1c6e2a-6a3e-4c43-9a53-0f6f0c7d9b11 (or its first {MinPrefix} or more characters), got '{Id}'");
    }

    private static bool IsPrefix(string text) =>
        text.Length is >= MinPrefix and < 36 && text.All(c => char.IsAsciiHexDigit(c) || c == '-');

    /// <summary>
    /// The whole id: as given, or the one migration whose id begins with the characters given (tables print ids cut
    /// short). Several or none is refused, naming them: a cancel or an abandon never guesses which migration is meant.
    /// </summary>
    public async Task<string> ResolveIdAsync(LsmApiClient api, CancellationToken ct)
    {
        if (UuidText.TryParse(Id, out _)) return Id;
        var matches = new List<string>();
        for (var offset = 0; ; offset += PageSize)
        {
            var page = (await api.GetAsync($"/api/migrations?limit={PageSize}&offset={offset}", ct)).Json.Array("migrations").Select(m => m.Str("id")).ToList();
            matches.AddRange(page.Where(id => id.StartsWith(Id, StringComparison.OrdinalIgnoreCase)));
            if (page.Count < PageSize) break;
        }
        return matches.Distinct().ToList() switch
        {
            [var one] => one,
            [] => throw CliFailure.BadUsage($"no migration's id begins with '{Id}' (`lsm migrations` lists them)"),
            var several => throw CliFailure.BadUsage(
                $"'{Id}' begins the ids of {several.Count} migrations ({string.Join(", ", several.Take(3))}{(several.Count > 3 ? ", …" : "")}): give more of it"),
        };
    }
}

/// <summary><c>lsm migration show ID</c>: status, each disk's progress, and every step with its times.</summary>
public sealed class MigrationShowCommand : AsyncCommand<MigrationIdSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, MigrationIdSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var id = await settings.ResolveIdAsync(api, ct);
        var migration = await api.GetAsync($"/api/migrations/{id}", ct);
        if (settings.Json) Output.Json(migration.Text);
        else await MigrationView.WriteAsync(api, migration.Json, ct);
        return ExitCodes.Ok;
    }
}

/// <summary>cancel, resume and abandon: one POST each to /api/migrations/{id}/{action}.</summary>
public abstract class MigrationActionCommand(string action) : AsyncCommand<MigrationIdSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, MigrationIdSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var id = await settings.ResolveIdAsync(api, ct);
        var answer = await api.PostAsync($"/api/migrations/{id}/{action}", null, ct);
        if (settings.Json) Output.Json(answer.Text);
        else Output.Console.WriteLine($"migration {id}: {answer.Json.Str("message")}");
        return ExitCodes.Ok;
    }
}

public sealed class MigrationCancelCommand() : MigrationActionCommand("cancel");

public sealed class MigrationResumeCommand() : MigrationActionCommand("resume");

public sealed class MigrationAbandonCommand() : MigrationActionCommand("abandon");

public sealed class MigrationsSettings : GlobalSettings
{

    [CommandOption("--active")]
    [Description("Only the migrations that have not finished (running, queued, rolling back, suspended)")]
    public bool Active { get; set; }

    [CommandOption("--vm <VM>")]
    [Description("Only the migrations of this VM (its name or id)")]
    public string? Vm { get; set; }

    [CommandOption("--status <STATUS>")]
    [Description("Only the migrations in this status: queued, running, rollingback, suspended, completed, failed, cancelled or abandoned")]
    public string? Status { get; set; }

    [CommandOption("--limit <N>")]
    [Description("At most N migrations (1-5000; default 500): a page, newest first")]
    public int? Limit { get; set; }

    [CommandOption("--offset <N>")]
    [Description("Skip the N newest first: the next page is --offset LIMIT, then 2×LIMIT …")]
    public int? Offset { get; set; }

    public override ValidationResult Validate()
    {
        if (Limit is < 1 or > 5000) return ValidationResult.Error($"--limit must be 1 to 5000, got {Limit}");
        if (Offset is < 0) return ValidationResult.Error($"--offset must be 0 or more, got {Offset}");
        if (Status is not null && !MigrationStatusKinds.All.Contains(Status))
            return ValidationResult.Error($"--status must be one of {string.Join(", ", MigrationStatusKinds.All)}, got '{Status}'");
        if (Vm is { Length: 0 }) return ValidationResult.Error("--vm needs a VM's name or id");
        return base.Validate();
    }
}

/// <summary><c>lsm migrations [--active] [--vm VM] [--status STATUS] [--limit N] [--offset N]</c>: the migrations the Coordinator's journal knows, newest first, a page at a time.</summary>
public sealed class MigrationsCommand : AsyncCommand<MigrationsSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, MigrationsSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var query = new List<string>();
        if (settings.Active) query.Add("active=true");
        if (settings.Status is { } kind) query.Add($"status={kind}");
        // an id as it is (also a VM the inventory no longer has); a name as the inventory knows it (unknown: 404 with its message)
        if (settings.Vm is { } vm)
            query.Add("vm=" + Uri.EscapeDataString(Guid.TryParse(vm, out _) ? vm : (await api.GetAsync($"/api/vms/{Uri.EscapeDataString(vm)}", ct)).Json.Str("id")));
        if (settings.Limit is { } limit) query.Add($"limit={limit}");
        if (settings.Offset is { } offset) query.Add($"offset={offset}");
        var list = await api.GetAsync("/api/migrations" + (query.Count > 0 ? "?" + string.Join('&', query) : ""), ct);
        if (settings.Json)
        {
            Output.Json(list.Text);
            return ExitCodes.Ok;
        }
        var migrations = list.Json.Array("migrations").ToList();
        if (migrations.Count == 0)
        {
            Output.Console.WriteLine(settings.Active ? "no active migrations" : "no migrations");
            return ExitCodes.Ok;
        }
        var vms = await VmNames.LoadAsync(api, migrations.Select(m => m.Str("vm")), ct);
        var table = new Table().AddColumns("Id", "VM", "Status", "Strategy", "Disks", "Started", "Updated");
        foreach (var m in migrations)
        {
            var status = m.Str("status");
            var colour = status == "completed" ? "green" : m.Bool("finished") ? "red" : "yellow";
            var disks = m.Array("disks").ToList();
            var done = disks.Count(d => d.Str("phase") == "Completed");
            table.AddRow(Output.Escape(m.Str("id")), Output.Escape(vms.Of(m.Str("vm"))), $"[{colour}]{Output.Escape(status)}[/]", Output.Escape(m.Str("strategy")),
                $"{done}/{disks.Count}", Output.Escape(Time(m.Str("requestedAt"))), Output.Escape(Time(m.Str("updatedAt"))));
        }
        Output.Console.Write(table);
        // a page of a longer list says so, and how to see the next one
        var total = list.Json.TryGetProperty("total", out var t) ? t.GetInt32() : migrations.Count;
        var from = settings.Offset ?? 0;
        if (from > 0 || from + migrations.Count < total)
            Output.Console.WriteLine($"{from + 1}-{from + migrations.Count} of {total}" +
                                     (from + migrations.Count < total ? $"; the next page: --offset {from + migrations.Count}" : ""));
        return ExitCodes.Ok;
    }

    private static string Time(string iso) =>
        DateTimeOffset.TryParse(iso, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.None, out var t)
            ? t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss'Z'", System.Globalization.CultureInfo.InvariantCulture)
            : iso;
}

public sealed class SetSpeedSettings : MigrationIdSettings
{
    [CommandArgument(1, "<RATE>")]
    [Description("The new bandwidth limit of the whole migration, e.g. 50MiB/s or 512k; 0 = unlimited")]
    public string Rate { get; set; } = "";

    public long BytesPerSecond => ByteRate.TryParse(Rate, out var b) ? b : 0;

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        return ByteRate.TryParse(Rate, out _)
            ? ValidationResult.Success()
            : ValidationResult.Error($"RATE '{Rate}' is not a rate like 100MiB/s, 512k or 0 (unlimited)");
    }
}

/// <summary><c>lsm migration set-speed ID RATE</c>: changes the running copy's bandwidth at once, and the later steps'.</summary>
public sealed class MigrationSetSpeedCommand : AsyncCommand<SetSpeedSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SetSpeedSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var id = await settings.ResolveIdAsync(api, ct);
        var answer = await api.PostAsync($"/api/migrations/{id}/speed", new { bytesPerSecond = settings.BytesPerSecond }, ct);
        if (settings.Json) Output.Json(answer.Text);
        else Output.Console.WriteLine(settings.BytesPerSecond == 0
            ? $"migration {id}: speed unlimited"
            : $"migration {id}: speed {ByteRate.Format(settings.BytesPerSecond)}/s");
        return ExitCodes.Ok;
    }
}

/// <summary>A migration as tables: the summary, one row per disk, one row per step attempt.</summary>
public static class MigrationView
{
    /// <summary>As <see cref="Write(JsonElement, DomainNames, VmNames?)"/>, with the names of its domains and VM read from the API.</summary>
    public static async Task WriteAsync(LsmApiClient api, JsonElement m, CancellationToken ct) =>
        Write(m, await DomainNames.LoadAsync(api, ct), await VmNames.LoadAsync(api, [m.Str("vm")], ct));


    public static void Write(JsonElement m, DomainNames domains, VmNames? vms = null)
    {
        var console = Output.Console;
        var status = m.Str("status");
        var colour = status == "completed" ? "green" : m.Bool("finished") ? "red" : "yellow";
        var summary = new Grid().AddColumn().AddColumn();
        summary.AddRow("Migration", Output.Escape(m.Str("id")));
        summary.AddRow("VM", Output.Escape(vms?.WithId(m.Str("vm")) ?? m.Str("vm")));
        summary.AddRow("Status", $"[{colour}]{Output.Escape(status)}[/]");
        summary.AddRow("Strategy", Output.Escape(m.Str("strategy")));
        summary.AddRow("Requested", Output.Escape(m.Str("requestedAt")));
        if (m.Str("finishedAt") is { Length: > 0 } finished) summary.AddRow("Finished", Output.Escape(finished));
        // the limits as they stand (set-speed changes the speed): what an operator checks when a move seems slow
        if (m.Obj("bandwidthBytesPerSecond") is { ValueKind: JsonValueKind.Number } speed)
            summary.AddRow("Speed limit", speed.GetInt64() > 0 ? $"{ByteRate.Format(speed.GetInt64())}/s, shared by the disks moving at once" : "none");
        if (m.Obj("maxParallelDisks") is { ValueKind: JsonValueKind.Number } parallel)
            summary.AddRow("Disks at once", parallel.GetInt32().ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (m.Str("copyMode") is { Length: > 0 } mode) summary.AddRow("Copy mode", Output.Escape(mode));
        if (status != "completed" && m.Str("error") is { Length: > 0 } error) summary.AddRow("Error", $"[red]{Output.Escape(error)}[/]");
        console.Write(summary);

        var completed = status == "completed";
        var disks = new Table().AddColumns("Disk (image)", "From → to", "Phase", "Step", "Attempt", "Copied", "Left", "ETA", "Last error");
        var steps = new Table().AddColumns("Disk", "Step", "Attempt", "Started", "Took", "Switch stall", "Outcome");
        var notes = new List<string>();
        foreach (var d in m.Array("disks"))
        {
            var (copied, left, eta) = Progress(d, completed);
            // an error a retried step got past is history once the migration completed: the step table keeps it
            var lastError = !completed && d.Str("lastError") is { Length: > 0 } e ? $"[red]{Output.Escape(e)}[/]" : "";
            disks.AddRow(Output.Escape(d.Str("image")), Output.Escape($"{domains.ShortOf(d.Str("source"))} → {domains.ShortOf(d.Str("destination"))}"),
                Output.Escape(d.Str("phase")), Output.Escape(d.Str("step")), d.Long("attempt").ToString(), copied, left, eta, lastError);
            foreach (var t in DistinctSteps(d.Array("timings")))
            {
                var took = DateTimeOffset.TryParse(t.Str("startedAt"), out var s) && DateTimeOffset.TryParse(t.Str("endedAt"), out var en)
                    ? $"{(en - s).TotalMilliseconds:0} ms"
                    : "running";
                // the host's own timing of a switch (how long the guest's I/O could wait), beside the step's whole round trip
                var stall = t.Obj("switchStallMs") is { ValueKind: JsonValueKind.Number } ms ? $"{ms.GetDouble():0.0} ms" : "";
                steps.AddRow(Output.Escape(d.Str("image")[..Math.Min(8, d.Str("image").Length)]), Output.Escape(t.Str("step")), t.Long("attempt").ToString(),
                    Output.Escape(t.Str("startedAt")), took, stall, Output.Escape(t.Str("outcome")));
                // what the host decided by itself (a mirror started again write-blocking): too long for a cell
                if (t.Str("note") is { Length: > 0 } note) notes.Add($"{d.Str("image")} {t.Str("step")}: {note}");
            }
        }
        console.Write(disks);
        if (steps.Rows.Count > 0) console.Write(steps);
        foreach (var note in notes) console.MarkupLine($"[yellow]Note[/] {Output.Escape(note)}");
        var leftBehind = m.Array("leftBehind").ToList();
        if (leftBehind.Count > 0)
        {
            var table = new Table().AddColumns("Left behind on domain", "Disk (image)", "What", "To remove");
            foreach (var l in leftBehind)
                table.AddRow(Output.Escape(domains.Of(l.Str("domain")) is var name && name != l.Str("domain") ? $"{name} ({l.Str("domain")})" : name),
                    Output.Escape(l.Str("image")), Output.Escape(l.Str("what")), Output.Escape(l.Str("remove")));
            console.Write(table);
        }
    }

    /// <summary>
    /// A disk's progress as bytes copied, bytes left and the time left. Not a percentage: the mirror's total grows while
    /// the guest writes, so a share of it can go backwards; what is copied never does. A completed disk has nothing left.
    /// </summary>
    public static (string Copied, string Left, string Eta) Progress(JsonElement disk, bool completed)
    {
        var done = disk.Long("done");
        var total = disk.Long("total");
        // the last step of a completed disk (deleting the source) copied nothing: show what all its steps copied
        if (completed) return (ByteRate.Format(disk.Long("copied") is > 0 and var copied ? copied : Math.Max(done, total)), ByteRate.Format(0), "");
        if (total <= 0 && done <= 0) return ("", "", "");
        var left = ByteRate.Format(Math.Max(0, total - done));
        var eta = disk.Obj("remainingSeconds") is { ValueKind: JsonValueKind.Number } r ? $"{r.GetDouble():0.0} s" : "";
        return (ByteRate.Format(done), left, eta);
    }

    /// <summary>
    /// One row per step attempt: a step the saga sent again (after a restart, the same operation id) is listed by its
    /// events once per send; the entry that ended wins, else the latest.
    /// </summary>
    public static IEnumerable<JsonElement> DistinctSteps(IEnumerable<JsonElement> timings) =>
        timings
            .Select((t, order) => (Timing: t, Order: order))
            .GroupBy(x => (Step: x.Timing.Str("step"), Attempt: x.Timing.Long("attempt")))
            .Select(g => g.OrderBy(x => x.Timing.Str("endedAt") is { Length: > 0 } ? 1 : 0).ThenBy(x => x.Order).Last())
            .OrderBy(x => x.Order)
            .Select(x => x.Timing);
}
