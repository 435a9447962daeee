using System.ComponentModel;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary>The settings of the commands on one VM.</summary>
public class VmSettings : GlobalSettings
{
    [CommandArgument(0, "<VM>")]
    [Description("The VM: its id, or its name when no other VM has it (as `lsm vms` lists them)")]
    public string Vm { get; set; } = "";

    public string VmPath => "/api/vms/" + Uri.EscapeDataString(Vm);

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        return string.IsNullOrWhiteSpace(Vm) ? ValidationResult.Error("VM is required: its id or its name") : ValidationResult.Success();
    }
}

/// <summary>Prints a VM: its state, then each disk's chain layer by layer with the domain of each volume.</summary>
public static class VmOutput
{
    public static async Task<int> PrintAsync(LsmApiClient api, GlobalSettings settings, ApiResponse vm, string? headline, CancellationToken ct)
    {
        if (settings.Json)
        {
            Output.Json(vm.Text);
            return ExitCodes.Ok;
        }
        var names = await DomainNames.LoadAsync(api, ct);
        var v = vm.Json;
        if (headline is not null) Output.Console.MarkupLine(Output.Escape(headline));
        Output.Console.MarkupLine($"VM [bold]{Output.Escape(v.Str("name"))}[/] {Output.Escape(v.Str("id"))} on {Output.Escape(v.Str("host"))}: " +
                                  (v.Bool("running") ? "[green]running[/]" : "[yellow]stopped[/]"));
        var table = new Table().AddColumns("Disk (image)", "Size", "Allocated", "Base", "Layer", "Volume", "On domain", "Migration");
        foreach (var disk in v.Array("disks"))
        {
            var chain = disk.Array("chain").ToList();
            for (var i = 0; i < Math.Max(1, chain.Count); i++)
            {
                var layer = i < chain.Count ? chain[i] : default;
                var role = chain.Count == 0 ? "" : i == chain.Count - 1 ? $"{i} (leaf)" : i == 0 ? "0 (base)" : i.ToString(CultureInfo.InvariantCulture);
                table.AddRow(
                    i == 0 ? Output.Escape(disk.Str("image")) : "",
                    i == 0 ? ByteRate.Format(disk.Long("capacityBytes")) : "",
                    i == 0 ? ByteRate.Format(disk.Long("allocatedBytes")) : "",
                    i == 0 ? Output.Escape(BaseShape(disk)) : "",
                    role,
                    Output.Escape(layer.Str("volume")),
                    chain.Count == 0 && disk.Str("problem") is { Length: > 0 } problem
                        ? $"[red]{Output.Escape(problem)}[/]"
                        : Output.Escape(names.Of(layer.Str("domain"))),
                    i == 0 ? Output.Escape(disk.Str("migration")) : "");
            }
        }
        Output.Console.Write(table);
        return ExitCodes.Ok;
    }

    /// <summary>"raw sparse", "qcow2 preallocated"...; empty when the host did not say (every layer above the base is qcow2).</summary>
    private static string BaseShape(JsonElement disk) => $"{disk.Str("baseFormat")} {disk.Str("baseAllocation")}".Trim();
}

/// <summary><c>lsm vm show VM</c>.</summary>
public sealed class VmShowCommand : AsyncCommand<VmSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, VmSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var vm = await api.GetAsync(settings.VmPath, ct);
        return await VmOutput.PrintAsync(api, settings, vm, null, ct);
    }
}

public sealed partial class VmCreateSettings : GlobalSettings
{
    [CommandArgument(0, "<NAME>")]
    [Description("The new VM's name")]
    public string Name { get; set; } = "";

    [CommandOption("--host <HOST>")]
    [Description("The host to run it on, e.g. host-1 (as `lsm hosts` lists them)")]
    public string? Host { get; set; }

    [CommandOption("--disk <SIZE@DOMAIN>")]
    // Spectre reads descriptions as markup: the spec's literal brackets are doubled.
    [Description("A disk: SIZE@DOMAIN[[:snapshots=N]][[:format=raw|qcow2]][[:preallocated]] (domain by id or name; options in any order, each once): " +
                 "N snapshots make a chain of N+1 volumes; the base is raw (the default) or qcow2, sparse (the default) or preallocated " +
                 "(raw: allocated whole; qcow2: its tables). E.g. 1GiB@fast-ssd:snapshots=2:format=qcow2. Repeat for several")]
    public string[] Disks { get; set; } = [];

    public const string DiskShape = "SIZE@DOMAIN[:snapshots=N][:format=raw|qcow2][:preallocated]";

    // ASCII digits only: int.Parse throws on the other scripts' digits that \d would let through.
    [GeneratedRegex(@"^[0-9]{1,3}$")]
    private static partial Regex SnapshotCountPattern();

    /// <param name="Format">The base's format as the API takes it: "raw" or "qcow2".</param>
    public sealed record DiskSpec(long SizeBytes, string Domain, int Snapshots, string Format = "raw", bool Preallocated = false);

    /// <summary>The disk options parsed; null with the message when one is malformed.</summary>
    public static DiskSpec? ParseDisk(string text, out string? error)
    {
        error = null;
        string Fail(string why) => $"--disk '{text}': {why}";
        var at = text.Trim().IndexOf('@');
        var parts = at < 0 ? [] : text.Trim()[(at + 1)..].Split(':');
        if (at <= 0 || parts[0].Length == 0)
        {
            error = $"--disk '{text}' is not {DiskShape}, e.g. 1GiB@fast-ssd:snapshots=2";
            return null;
        }
        var sizeText = text.Trim()[..at];
        if (!ByteRate.TryParse(sizeText, out var size) || size <= 0 || size % 512 != 0)
        {
            error = Fail($"size '{sizeText}' is not a size like 1GiB or 512MiB (a multiple of 512 bytes)");
            return null;
        }
        var spec = new DiskSpec(size, parts[0], 0);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var option in parts.Skip(1))
        {
            var equals = option.IndexOf('=');
            var (name, value) = equals < 0 ? (option, null) : (option[..equals], option[(equals + 1)..]);
            if (name is not ("snapshots" or "format" or "preallocated"))
            {
                error = Fail($"unknown option '{option}' (the options are snapshots=N, format=raw|qcow2 and preallocated)");
                return null;
            }
            if (!seen.Add(name))
            {
                error = Fail($"option '{name}' is given twice");
                return null;
            }
            switch (name)
            {
                case "snapshots" when value is not null && SnapshotCountPattern().IsMatch(value):
                    spec = spec with { Snapshots = int.Parse(value, CultureInfo.InvariantCulture) };
                    break;
                case "snapshots":
                    error = Fail($"'{option}' is not snapshots=N with N a number of snapshots, e.g. snapshots=2");
                    return null;
                case "format" when value is "raw" or "qcow2":
                    spec = spec with { Format = value };
                    break;
                case "format":
                    error = Fail($"'{option}' is not format=raw or format=qcow2");
                    return null;
                case "preallocated" when value is null:
                    spec = spec with { Preallocated = true };
                    break;
                default:
                    error = Fail($"'{option}': preallocated takes no value (leave it out for a sparse base)");
                    return null;
            }
        }
        return spec;
    }

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        if (string.IsNullOrWhiteSpace(Name)) return ValidationResult.Error("NAME is required");
        if (string.IsNullOrWhiteSpace(Host)) return ValidationResult.Error("--host HOST is required, e.g. --host host-1");
        if (Disks.Length == 0) return ValidationResult.Error("give at least one --disk SIZE@DOMAIN, e.g. --disk 1GiB@fast-ssd");
        foreach (var disk in Disks)
            if (ParseDisk(disk, out var error) is null) return ValidationResult.Error(error!);
        return ValidationResult.Success();
    }
}

/// <summary><c>lsm vm create NAME --host HOST --disk SIZE@DOMAIN[:snapshots=N][:format=raw|qcow2][:preallocated] ...</c>: the SPM makes the disks, the host starts the VM.</summary>
public sealed class VmCreateCommand : AsyncCommand<VmCreateSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, VmCreateSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var disks = settings.Disks.Select(d => VmCreateSettings.ParseDisk(d, out _)!)
            .Select(d => new { sizeBytes = d.SizeBytes, domain = d.Domain, snapshots = d.Snapshots, format = d.Format, preallocated = d.Preallocated })
            .ToList();
        var vm = await api.PostAsync("/api/vms", new { name = settings.Name, host = settings.Host, disks }, ct);
        return await VmOutput.PrintAsync(api, settings, vm, "created and started", ct);
    }
}

/// <summary><c>lsm vm start|stop|snapshot VM</c>: one action on a VM, then the VM as it is after it.</summary>
public abstract class VmActionCommand(string action, string done) : AsyncCommand<VmSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, VmSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var vm = await api.PostAsync($"{settings.VmPath}/{action}", null, ct);
        return await VmOutput.PrintAsync(api, settings, vm, done, ct);
    }
}

public sealed class VmStartCommand() : VmActionCommand("start", "started");
public sealed class VmStopCommand() : VmActionCommand("stop", "stopped");
public sealed class VmSnapshotCommand() : VmActionCommand("snapshot", "live snapshot taken: every disk now writes to a new leaf");

public sealed partial class VmIoSettings : VmSettings
{
    [CommandOption("--rate <RATE>")]
    [Description("How fast the guest writes, over all its disks, e.g. 20MiB/s; 0 = as fast as the disks take it")]
    public string? Rate { get; set; }

    [CommandOption("--seconds <N>")]
    [Description("Stop after N seconds; 0 (the default) = until the VM stops")]
    [DefaultValue(0)]
    public int Seconds { get; set; }

    [CommandOption("--flush-interval <INTERVAL>")]
    [Description("How often the guest sends FLUSH to make its acknowledged writes durable, e.g. 100ms or 1s (the default is 100ms); 0 = never")]
    public string? FlushInterval { get; set; }

    [CommandOption("--fua")]
    [Description("Send every write with FUA, so each is durable when acknowledged (no flushes needed)")]
    public bool Fua { get; set; }

    [CommandOption("--status")]
    [Description("Show the workload's counters instead of starting one")]
    public bool Status { get; set; }

    public long RateBytesPerSecond => ByteRate.TryParse(Rate, out var b) ? b : 0;

    /// <summary>The flush interval in milliseconds, or null to leave the default to the server.</summary>
    public int? FlushIntervalMs => FlushInterval is null ? null : ParseInterval(FlushInterval, out var ms) ? ms : null;

    [GeneratedRegex(@"^(?<n>\d{1,9})(?<unit>ms|s)?$")]
    private static partial Regex IntervalPattern();

    /// <summary>"0", "250ms" or "2s" as milliseconds.</summary>
    public static bool ParseInterval(string text, out int milliseconds)
    {
        milliseconds = 0;
        var match = IntervalPattern().Match(text.Trim());
        if (!match.Success || !long.TryParse(match.Groups["n"].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var n))
            return false;
        var unit = match.Groups["unit"].Value;
        if (unit.Length == 0 && n != 0)
            return false; // a bare number is ambiguous: say ms or s
        var ms = unit == "s" ? n * 1000 : n;
        if (ms > 3_600_000)
            return false;
        milliseconds = (int)ms;
        return true;
    }

    public override ValidationResult Validate()
    {
        var basic = base.Validate();
        if (!basic.Successful) return basic;
        if (Status) return ValidationResult.Success();
        if (Rate is null) return ValidationResult.Error("--rate RATE is required, e.g. --rate 20MiB/s (or --status to see a running workload)");
        if (!ByteRate.TryParse(Rate, out _)) return ValidationResult.Error($"--rate '{Rate}' is not a rate like 20MiB/s, 512k or 0 (unlimited)");
        if (Seconds < 0) return ValidationResult.Error($"--seconds must be 0 (until the VM stops) or more, got {Seconds}");
        if (FlushInterval is not null && !ParseInterval(FlushInterval, out _))
            return ValidationResult.Error($"--flush-interval '{FlushInterval}' is not an interval like 100ms or 1s (at most 1 hour), or 0 (never)");
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>lsm vm io VM --rate 20MiB/s [--seconds N] [--flush-interval 100ms|0] [--fua]</c>: the guest workload on the VM's disks, in the
/// background on its host, every write recorded in a ledger there for <c>lsm vm verify</c> (sent, acknowledged, and durable once a
/// FLUSH covered it or it went with FUA); <c>--status</c> shows its counters.
/// </summary>
public sealed class VmIoCommand : AsyncCommand<VmIoSettings>
{
    private static double Seconds(JsonElement status) =>
        status.Obj("elapsedSeconds") is { ValueKind: JsonValueKind.Number } n ? n.GetDouble() : 0;

    public override async Task<int> ExecuteAsync(CommandContext context, VmIoSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        if (settings.Status)
        {
            var status = await api.GetAsync($"{settings.VmPath}/io", ct);
            if (settings.Json)
            {
                Output.Json(status.Text);
                return ExitCodes.Ok;
            }
            var s = status.Json;
            Output.Console.MarkupLine(
                $"guest I/O {(s.Bool("running") ? "[green]running[/]" : "not running")}: {s.Long("writes")} writes, {ByteRate.Format(s.Long("bytes"))} " +
                $"in {Seconds(s).ToString("0.0", CultureInfo.InvariantCulture)} s, {s.Long("durableWrites")} durable " +
                $"({(s.Bool("fua") ? "FUA" : s.Long("flushIntervalMs") > 0 ? $"{s.Long("flushes")} flushes, every {s.Long("flushIntervalMs")} ms" : "no flushes")}), " +
                $"{s.Long("errors")} errors" +
                (s.Str("lastError").Length > 0 ? $" (last: {Output.Escape(s.Str("lastError"))})" : ""));
            return ExitCodes.Ok;
        }
        var started = await api.PostAsync($"{settings.VmPath}/io",
            new { bytesPerSecond = settings.RateBytesPerSecond, seconds = settings.Seconds, flushIntervalMs = settings.FlushIntervalMs, fua = settings.Fua }, ct);
        if (settings.Json) Output.Json(started.Text);
        else Output.Console.MarkupLine(Output.Escape(started.Json.Str("message")) + "; `lsm vm verify` checks every acknowledged write");
        return ExitCodes.Ok;
    }
}

/// <summary>
/// <c>lsm vm verify VM</c>: every block the guest's ledgers name is read back. A block without its durable write (one a FLUSH or
/// FUA covered) is lost: exit 1. A block without an acknowledged write no flush covered yet is in doubt: reported, not a loss.
/// </summary>
public sealed class VmVerifyCommand : AsyncCommand<VmSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, VmSettings settings, CancellationToken ct)
    {
        using var api = settings.Client();
        var result = await api.PostAsync($"{settings.VmPath}/verify", null, ct);
        var r = result.Json;
        var ok = r.Bool("ok");
        if (settings.Json) Output.Json(result.Text);
        else
        {
            var inDoubt = r.Long("inDoubt");
            Output.Console.MarkupLine((ok ? "[green]ok[/]: " : "[red]DATA LOST[/]: ") +
                $"{r.Long("checked")} blocks checked, {r.Long("durableChecked")} of them with a durable write; " +
                (ok ? "lost: 0" : $"[red]lost: {r.Long("lost")}[/] (a durable write is gone)") +
                $"; in doubt: {inDoubt}" +
                (inDoubt > 0 ? " (acknowledged but never flushed, and not there: a crash may take those back)" : ""));
            foreach (var detail in r.Array("details"))
                Output.Console.MarkupLine("  " + Output.Escape(detail.GetString() ?? ""));
        }
        if (!ok) throw CliFailure.Failed($"VM {settings.Vm}: {r.Long("lost")} durable writes lost");
        return ExitCodes.Ok;
    }
}
