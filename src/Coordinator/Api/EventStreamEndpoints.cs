using System.Text;
using System.Text.Json;
using Akka.Actor;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Options;
using HttpJsonOptions = Microsoft.AspNetCore.Http.Json.JsonOptions;

namespace LiveMigration.Coordinator.Api;

/// <summary>
/// Server-sent events of the migrations: <c>GET /api/migrations/events</c> (every change of any migration) and
/// <c>GET /api/migrations/{id}/events</c> (the current state, then each change, ending after the finished one).
/// Each event is <c>event: migration</c> with the same JSON as <c>GET /api/migrations/{id}</c>; a comment line
/// every keep-alive interval (15 s, setting <c>Coordinator:EventKeepAliveSeconds</c>) keeps proxies from
/// closing an idle stream and lets the server notice a client that went away.
/// </summary>
public static class EventStreamEndpoints
{
    public const string KeepAliveSetting = "Coordinator:EventKeepAliveSeconds";
    private static readonly TimeSpan DefaultKeepAlive = TimeSpan.FromSeconds(15);
    // Changes that come this close together become one event per migration.
    private static readonly TimeSpan CoalesceWindow = TimeSpan.FromMilliseconds(100);

    public static IEndpointRouteBuilder MapMigrationEventStreams(this IEndpointRouteBuilder app)
    {
        var feed = new MigrationChangeFeed(app.ServiceProvider.GetService<Migration.MigrationCatalog>());
        var keepAlive = KeepAliveOf(app.ServiceProvider.GetRequiredService<IConfiguration>());

        app.MapGet("/api/migrations/events", async (HttpContext http, ActorSystem system, MigrationService service, IOptions<HttpJsonOptions> json) =>
        {
            var ct = http.RequestAborted;
            using var subscription = await feed.SubscribeAsync(system, only: null, ct);
            var stream = new EventStreamWriter(http.Response, json.Value.SerializerOptions);
            await stream.StartAsync(ct);
            await PumpAsync(subscription, stream, service, keepAlive, stopWhenFinished: false, ct);
        });

        app.MapGet("/api/migrations/{id}/events", async (string id, HttpContext http, ActorSystem system, MigrationService service, IOptions<HttpJsonOptions> json) =>
        {
            var ct = http.RequestAborted;
            if (!MigrationId.TryParse(id, out var migration))
            {
                await Results.Json(new { code = ErrorCodes.InvalidId, message = $"migration id must be a UUID, got '{ApiText.Clip(id)}'" }, statusCode: StatusCodes.Status400BadRequest)
                    .ExecuteAsync(http);
                return;
            }
            // Subscribed before the first state is read: a change right after it is not lost.
            using var subscription = await feed.SubscribeAsync(system, migration.Value, ct);
            var current = await service.GetAsync(migration.Value, ct);
            if (current is null)
            {
                await Results.Json(new { code = MigrationErrorCodes.MigrationNotFound, message = $"no migration {migration}" }, statusCode: StatusCodes.Status404NotFound)
                    .ExecuteAsync(http);
                return;
            }
            var stream = new EventStreamWriter(http.Response, json.Value.SerializerOptions);
            await stream.StartAsync(ct);
            await stream.WriteMigrationAsync(MigrationEndpoints.ResponseOf(current), ct);
            if (current.Finished) return;
            await PumpAsync(subscription, stream, service, keepAlive, stopWhenFinished: true, ct, firstUpdatedAt: current.UpdatedAt);
        });
        return app;
    }

    /// <summary>
    /// Sends the full state of every migration that changed, until the client goes away (or, for one migration's
    /// stream, until it finished). A client that disconnects cancels the request; the subscription is disposed
    /// by the caller, which unregisters it from the hub.
    /// </summary>
    private static async Task PumpAsync(MigrationChangeSubscription subscription, EventStreamWriter stream, MigrationService service,
        TimeSpan keepAlive, bool stopWhenFinished, CancellationToken ct, DateTimeOffset? firstUpdatedAt = null)
    {
        Task<IReadOnlyList<MigrationId>>? next = null;
        // One timer at a time (not one per change): a comment every interval, busy or idle.
        Task? tick = null;
        // For one migration's stream: when the state last sent was updated, so a periodic look sends only news.
        DateTimeOffset? lastUpdated = firstUpdatedAt;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                next ??= subscription.NextAsync(ct);
                tick ??= Task.Delay(keepAlive, ct);
                if (await Task.WhenAny(next, tick) == tick)
                {
                    tick = null;
                    await stream.WriteCommentAsync("keep-alive", ct);
                    // One migration's stream also looks again now and then, in case a change was lost on the way.
                    if (stopWhenFinished && subscription.Only is { } only)
                    {
                        var (finished, updated) = await SendAsync(service, stream, only, ct, onlyIfNewerThan: lastUpdated ?? DateTimeOffset.MinValue);
                        lastUpdated = updated;
                        if (finished) return;
                    }
                    continue;
                }
                await Task.Delay(CoalesceWindow, ct);
                var changed = (await next).ToHashSet();
                next = null;
                // Whatever arrived during the window rides along.
                var more = subscription.NextAsync(ct);
                if (more.IsCompletedSuccessfully) changed.UnionWith(await more);
                else next = more;
                foreach (var migration in changed)
                {
                    var (finished, updated) = await SendAsync(service, stream, migration, ct);
                    lastUpdated = updated;
                    if (finished && stopWhenFinished) return;
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException)
        {
            // The client went away; nothing to tell anyone.
        }
    }

    /// <summary>
    /// Sends a migration's current state; true when it has finished. With <paramref name="onlyIfNewerThan"/>, a state
    /// no newer than that (nothing changed since the last event) is not sent again.
    /// </summary>
    private static async Task<(bool Finished, DateTimeOffset? UpdatedAt)> SendAsync(MigrationService service, EventStreamWriter stream, MigrationId migration,
        CancellationToken ct, DateTimeOffset? onlyIfNewerThan = null)
    {
        MigrationView? view;
        try
        {
            view = await service.GetAsync(migration, ct);
        }
        catch (AskTimeoutException)
        {
            await stream.WriteCommentAsync($"migration {migration} did not answer; its next change will be sent", ct);
            return (false, onlyIfNewerThan);
        }
        if (view is null) return (false, onlyIfNewerThan);
        if (onlyIfNewerThan is { } seen && view.UpdatedAt is { } updated && updated <= seen && !view.Finished)
            return (false, seen);
        await stream.WriteMigrationAsync(MigrationEndpoints.ResponseOf(view), ct);
        return (view.Finished, view.UpdatedAt);
    }

    private static TimeSpan KeepAliveOf(IConfiguration configuration) =>
        double.TryParse(configuration[KeepAliveSetting], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var seconds) && seconds > 0
            ? TimeSpan.FromSeconds(seconds)
            : DefaultKeepAlive;

}

/// <summary>Writes the text/event-stream format, flushing each event so it leaves at once.</summary>
public sealed class EventStreamWriter(HttpResponse response, JsonSerializerOptions json)
{
    public async Task StartAsync(CancellationToken ct)
    {
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        // Reverse proxies (nginx) would otherwise buffer the stream.
        response.Headers["X-Accel-Buffering"] = "no";
        // A first comment sends the headers now, so a client knows the stream is open before any change.
        await WriteCommentAsync("connected", ct);
    }

    public Task WriteMigrationAsync(MigrationResponse migration, CancellationToken ct) =>
        WriteAsync($"event: migration\ndata: {JsonSerializer.Serialize(migration, json)}\n\n", ct);

    public Task WriteCommentAsync(string text, CancellationToken ct) => WriteAsync($": {text.Replace('\n', ' ')}\n\n", ct);

    private async Task WriteAsync(string text, CancellationToken ct)
    {
        await response.Body.WriteAsync(Encoding.UTF8.GetBytes(text), ct);
        await response.Body.FlushAsync(ct);
    }
}
