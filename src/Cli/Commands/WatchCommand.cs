using System.Text.Json;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary>
/// <c>lsm migration watch ID</c>: follows one migration through the Coordinator's event stream
/// (<c>GET /api/migrations/{id}/events</c>) until it finishes. On a terminal: a progress bar per disk with its phase
/// and step; piped: one line per change; with <c>--json</c>: each event's JSON on a line of its own. Exit 0 only
/// when the migration completed, 1 when it failed or was cancelled (a suspended one is watched on: an operator may
/// resume it), 3 when the API cannot be reached or the stream breaks off.
/// </summary>
public sealed class MigrationWatchCommand : AsyncCommand<MigrationIdSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, MigrationIdSettings settings, CancellationToken ct)
    {
        using var client = settings.Client();
        var id = await settings.ResolveIdAsync(client, ct);
        var stream = new MigrationEventStream(client, id) { OnConnectionLost = Output.Error };
        JsonElement? last;
        if (settings.Json)
            last = await stream.ForEachAsync(e => Output.Json(e.Text), ct);
        else if (Output.Console.Profile.Capabilities.Interactive)
            last = await WithProgressBarsAsync(stream, ct);
        else
            last = await stream.ForEachAsync(e => WriteLine(e.Json), ct);

        if (last is not { } final || !final.Bool("finished"))
            throw new CliFailure(ExitCodes.ApiUnreachable, $"the event stream of migration {id} ended before the migration finished; `lsm migration show {id}` tells where it is");
        if (!settings.Json) await MigrationView.WriteAsync(client, final, ct);
        return final.Str("status") == "completed" ? ExitCodes.Ok : ExitCodes.OperationFailed;
    }

    public static async Task<JsonElement?> WithProgressBarsAsync(MigrationEventStream stream, CancellationToken ct, Func<JsonElement, bool>? until = null)
    {
        JsonElement? last = null;
        await Output.Console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .StartAsync(async progress =>
            {
                // The bar shows the share copied, which the mirror's growing total could pull back: it only moves forward,
                // and the description says what is left in bytes and time.
                var bars = new Dictionary<string, ProgressTask>();
                last = await stream.ForEachAsync(e =>
                {
                    var m = e.Json;
                    foreach (var disk in m.Array("disks"))
                    {
                        var image = disk.Str("image");
                        if (!bars.TryGetValue(image, out var bar))
                            bars[image] = bar = progress.AddTask(Short(image), maxValue: BarScale);
                        var total = disk.Long("total");
                        var completed = m.Str("status") == "completed";
                        var share = completed ? BarScale : total > 0 ? BarScale * Math.Min(1.0, (double)disk.Long("done") / total) : 0;
                        bar.Value = Math.Max(bar.Value, share);
                        var (_, left, eta) = MigrationView.Progress(disk, completed);
                        var remaining = left is { Length: > 0 } && !completed ? $" · {left} left{(eta.Length > 0 ? ", " + eta : "")}" : "";
                        bar.Description = Output.Escape($"{Short(image)} {m.Str("status")} · {disk.Str("phase")}{(disk.Str("step") is { Length: > 0 } step ? " · " + step : "")}{remaining}");
                    }
                    if (m.Bool("finished") || until?.Invoke(m) == true)
                        foreach (var bar in bars.Values) bar.StopTask();
                }, ct, until);
            });
        return last;
    }

    private const double BarScale = 1000;

    /// <summary>One line per change: per disk its phase, step, bytes copied and left, and the time left (no percentage: see <see cref="MigrationView.Progress"/>).</summary>
    public static void WriteLine(JsonElement m)
    {
        var disks = m.Array("disks").Select(d =>
        {
            var (copied, left, eta) = MigrationView.Progress(d, m.Str("status") == "completed");
            var progress = copied.Length == 0 ? "" : $" {copied} copied, {left} left{(eta.Length > 0 ? ", " + eta : "")}";
            return $"{Short(d.Str("image"))} {d.Str("phase")}{(d.Str("step") is { Length: > 0 } step ? " " + step : "")}{progress}";
        });
        Output.Console.WriteLine($"{DateTime.Now:HH:mm:ss} {m.Str("status")}: {string.Join(", ", disks)}");
    }

    private static string Short(string id) => id.Length > 8 ? id[..8] : id;
}

/// <summary>One <c>event: migration</c> of the stream: its JSON and the text it came as.</summary>
public sealed record MigrationEvent(JsonElement Json, string Text);

/// <summary>
/// The Coordinator's server-sent events of one migration, through the CLI's API client (so the token goes with them).
/// A stream that breaks off or ends before the migration does (the Coordinator restarted, the connection dropped) is
/// connected again, with a growing pause, for up to <see cref="ReconnectFor"/>: the migration goes on without the
/// Coordinator that started it, so whoever follows it does too.
/// </summary>
public sealed class MigrationEventStream(LsmApiClient client, string id)
{
    public static readonly TimeSpan DefaultReconnectFor = TimeSpan.FromSeconds(120);
    private static readonly TimeSpan FirstPause = TimeSpan.FromMilliseconds(250);
    private static readonly TimeSpan LongestPause = TimeSpan.FromSeconds(3);

    /// <summary>How long a lost stream is tried again before the follower gives up (exit 3).</summary>
    public TimeSpan ReconnectFor { get; init; } = DefaultReconnectFor;

    /// <summary>Told once per loss, e.g. to say so on stderr.</summary>
    public Action<string>? OnConnectionLost { get; init; }

    /// <summary>
    /// Hands every migration event to <paramref name="onEvent"/> until the migration finishes (or <paramref name="until"/>
    /// says the caller has seen enough), reconnecting when the stream is lost; returns the last event.
    /// </summary>
    public async Task<JsonElement?> ForEachAsync(Action<MigrationEvent> onEvent, CancellationToken ct, Func<JsonElement, bool>? until = null)
    {
        JsonElement? last = null;
        DateTime? lostSince = null;
        var pause = FirstPause;
        while (true)
        {
            string why;
            try
            {
                await foreach (var (name, text) in client.StreamAsync($"/api/migrations/{id}/events", ct))
                {
                    if (name != "migration") continue;
                    lostSince = null;
                    pause = FirstPause;
                    var json = JsonDocument.Parse(text).RootElement.Clone();
                    last = json;
                    onEvent(new MigrationEvent(json, text));
                    if (json.Bool("finished") || until?.Invoke(json) == true) return last;
                }
                why = "the event stream ended";
            }
            catch (Exception e) when (IsTransient(e, seenBefore: last is not null))
            {
                why = e.Message;
            }
            // Lost before the end: the Coordinator may be restarting; the saga runs on from its journal.
            if (lostSince is null)
            {
                lostSince = DateTime.UtcNow;
                OnConnectionLost?.Invoke($"lost the event stream of migration {id} ({why}); reconnecting for up to {ReconnectFor.TotalSeconds:0} s");
            }
            if (DateTime.UtcNow - lostSince > ReconnectFor) return last;
            await Task.Delay(pause, ct);
            pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, LongestPause.Ticks));
        }
    }

    /// <summary>
    /// The migration's state by GET, retried like the stream while the API is away (the answer to read after a stream
    /// ended: also when the connection broke off, it says where the migration is).
    /// </summary>
    public async Task<ApiResponse> StateAsync(CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + ReconnectFor;
        var pause = FirstPause;
        while (true)
        {
            try
            {
                return await client.GetAsync($"/api/migrations/{id}", ct);
            }
            catch (Exception e) when (IsTransient(e, seenBefore: true) && DateTime.UtcNow < deadline)
            {
                await Task.Delay(pause, ct);
                pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, LongestPause.Ticks));
            }
        }
    }

    /// <summary>
    /// The API unreachable, a server error, a dropped connection: worth trying again. A refusal (unknown id, a bad token)
    /// is not, except a "not found" of a migration this stream has seen, which a Coordinator that is still recovering says.
    /// </summary>
    private static bool IsTransient(Exception e, bool seenBefore) => e switch
    {
        // a connection the Coordinator's restart broke may surface as a bare SocketException ("Transport endpoint is not
        // connected"), not wrapped in an IOException: seen in CI following a migration across a SIGKILLed Coordinator
        IOException or HttpRequestException or System.Net.Sockets.SocketException => true,
        TaskCanceledException => true,
        CliFailure f => f.ExitCode is ExitCodes.ApiUnreachable or ExitCodes.OperationFailed
                        || seenBefore && f.ExitCode == ExitCodes.BadUsage && f.Message.Contains(" 404 ", StringComparison.Ordinal),
        _ => false,
    };
}
