using System.Text.Json.Serialization;
using LiveMigration.Coordinator.Migration;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace LiveMigration.Coordinator.Api;

/// <summary>The JSON body of POST /api/migrations.</summary>
public sealed record StartMigrationBody(
    string? Vm,
    IReadOnlyList<DiskBody>? Disks,
    string? Strategy = null,
    long BandwidthBytesPerSecond = 0,
    string? CopyMode = null,
    int MaxParallelDisks = 1);

public sealed record DiskBody(string? Image, string? Destination);

/// <summary>
/// The JSON of GET /api/migrations/{id}: ids as UUID strings, strategy as <c>pre-copy</c>/<c>post-copy</c>,
/// <see cref="Error"/> as <c>CODE: message</c> (also split into <see cref="ErrorCode"/> and <see cref="ErrorMessage"/>),
/// durations in seconds.
/// </summary>
public sealed record MigrationResponse(
    string Id,
    string Vm,
    string Status,
    bool Finished,
    string Strategy,
    IReadOnlyList<DiskResponse> Disks,
    string? Error,
    string? ErrorCode,
    string? ErrorMessage,
    DateTimeOffset? RequestedAt,
    DateTimeOffset? UpdatedAt,
    DateTimeOffset? FinishedAt,
    IReadOnlyList<LeftBehindResponse> LeftBehind,
    long? BandwidthBytesPerSecond = null,
    string? CopyMode = null,
    int? MaxParallelDisks = null);

/// <summary>Volumes an abandoned migration left on a domain: what they are and how an operator removes them.</summary>
public sealed record LeftBehindResponse(string Image, string Domain, string What, string Remove);

/// <param name="Done">The current step's bytes copied (of <paramref name="Total"/>).</param>
/// <param name="Copied">What the disk's completed steps copied, all together: what a finished disk shows.</param>
public sealed record DiskResponse(
    string Image,
    string Source,
    string Destination,
    string Phase,
    string? Step,
    int Attempt,
    long Done,
    long Total,
    double? RemainingSeconds,
    string? LastError,
    IReadOnlyList<StepTimingResponse> Timings,
    long Copied);

/// <summary>The JSON of GET /api/migrations: newest request first.</summary>
/// <summary>One page of the list: <see cref="Total"/> migrations match, these are the ones from <see cref="Offset"/> on.</summary>
public sealed record MigrationListResponse(IReadOnlyList<MigrationResponse> Migrations, int Total, int Offset, int Limit);

/// <summary>The JSON body of POST /api/migrations/{id}/speed.</summary>
public sealed record SpeedBody(long? BytesPerSecond);

/// <param name="SwitchStallMs">For a switch (pivot, live snapshot, backing switch): how long the VM's host held the drive for it.</param>
/// <param name="Note">What the host decided on its own during the step, and why (e.g. a mirror started again write-blocking).</param>
public sealed record StepTimingResponse(string Step, int Attempt, DateTimeOffset StartedAt, DateTimeOffset? EndedAt, string? Outcome,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] double? SwitchStallMs = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Note = null);

/// <summary>
/// The migration part of the HTTP API (the operator surfaces grow it): start, show, cancel, resume,
/// abandon, and the inventory. Ids are validated before anything is asked; refusals carry a code.
/// </summary>
public static class MigrationEndpoints
{
    public static IEndpointRouteBuilder MapMigrationApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/api/migrations", async (StartMigrationBody body, MigrationService service, CancellationToken ct) =>
        {
            MigrationRequest request;
            try
            {
                request = ToRequest(body);
            }
            catch (Exception e) when (e is OperationFailedException or ArgumentException)
            {
                return Refused(StatusCodes.Status400BadRequest, e is OperationFailedException o ? o.Code : ErrorCodes.InvalidArgument, e.Message);
            }
            var outcome = await service.StartAsync(request, ct);
            return outcome.Accepted
                ? Results.Accepted($"/api/migrations/{outcome.Migration}", new { id = outcome.Migration.ToString(), message = outcome.Message })
                : Refused(StatusFor(outcome.Code), outcome.Code, outcome.Message);
        });
        // ?active=true, ?vm=UUID and ?status=KIND narrow the list; ?limit=N&offset=M page it
        app.MapGet("/api/migrations", async (string? active, string? limit, string? offset, string? vm, string? status, MigrationCatalog catalog,
            CancellationToken ct) =>
        {
            VmId? ofVm = null;
            if (vm is not null)
            {
                if (!UuidText.TryParse(vm, out var parsed))
                    return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidId, $"vm must be a VM's UUID, got '{ApiText.Clip(vm)}'");
                ofVm = new VmId(parsed);
            }
            if (status is not null && !MigrationStatusKinds.All.Contains(status))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidArgument,
                    $"status must be one of {string.Join(", ", MigrationStatusKinds.All)}, got '{ApiText.Clip(status)}'");
            if (active is not (null or "true" or "false"))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidArgument, $"active must be true or false, got '{ApiText.Clip(active)}'");
            var pageSize = MigrationCatalog.DefaultPageSize;
            if (limit is not null && (!int.TryParse(limit, out pageSize) || pageSize is < 1 or > MigrationCatalog.MaxPageSize))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidArgument,
                    $"limit must be a whole number from 1 to {MigrationCatalog.MaxPageSize}, got '{ApiText.Clip(limit)}'");
            var from = 0;
            if (offset is not null && (!int.TryParse(offset, out from) || from < 0))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidArgument, $"offset must be a whole number from 0, got '{ApiText.Clip(offset)}'");
            var page = await catalog.PageAsync(activeOnly: active == "true", from, pageSize, ct, ofVm, status);
            return Results.Ok(new MigrationListResponse(page.Migrations.Select(ResponseOf).ToList(), page.Total, page.Offset, page.Limit));
        });
        app.MapPost("/api/migrations/{id}/speed", async (string id, SpeedBody? body, MigrationService service, CancellationToken ct) =>
        {
            if (!MigrationId.TryParse(id, out var migration))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidId, $"migration id must be a UUID, got '{ApiText.Clip(id)}'");
            if (body?.BytesPerSecond is not { } speed || speed < 0)
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidArgument,
                    $"bytesPerSecond must be 0 (unlimited) or a positive number of bytes per second, got {body?.BytesPerSecond?.ToString() ?? "nothing"}");
            var outcome = await service.SetSpeedAsync(migration.Value, speed, ct);
            return outcome.Accepted
                ? Results.Ok(new { id, message = speed == 0 ? $"migration {migration}: speed unlimited" : $"migration {migration}: speed {speed} bytes/s" }) : Refused(StatusFor(outcome.Code), outcome.Code, outcome.Message);
        });
        app.MapGet("/api/migrations/{id}", async (string id, MigrationService service, CancellationToken ct) =>
        {
            if (!MigrationId.TryParse(id, out var migration))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidId, $"migration id must be a UUID, got '{ApiText.Clip(id)}'");
            var view = await service.GetAsync(migration.Value, ct);
            return view is null
                ? Refused(StatusCodes.Status404NotFound, MigrationErrorCodes.MigrationNotFound, $"no migration {migration}")
                : Results.Ok(ResponseOf(view));
        });
        app.MapPost("/api/migrations/{id}/{action}", async (string id, string action, MigrationService service, CancellationToken ct) =>
        {
            if (!MigrationId.TryParse(id, out var migration))
                return Refused(StatusCodes.Status400BadRequest, ErrorCodes.InvalidId, $"migration id must be a UUID, got '{ApiText.Clip(id)}'");
            var outcome = action switch
            {
                "cancel" => await service.CancelAsync(migration.Value, ct),
                "resume" => await service.ResumeAsync(migration.Value, ct),
                "abandon" => await service.AbandonAsync(migration.Value, ct),
                _ => null,
            };
            if (outcome is null)
                return Refused(StatusCodes.Status404NotFound, ErrorCodes.InvalidArgument, $"no action '{ApiText.Clip(action)}' (cancel, resume, abandon)");
            return outcome.Accepted ? Results.Ok(new { id, message = outcome.Message }) : Refused(StatusFor(outcome.Code), outcome.Code, outcome.Message);
        });
        app.MapGet("/api/inventory", async (MigrationService service, CancellationToken ct) => Results.Ok(await service.InventoryAsync(ct)));
        return app;
    }

    private static MigrationRequest ToRequest(StartMigrationBody body)
    {
        var vm = VmId.Parse(body.Vm);
        if (body.Disks is not { Count: > 0 })
            throw new ArgumentException("disks: name at least one disk to move, as {\"image\": UUID, \"destination\": UUID}");
        if (body.Disks.Any(d => d is null))
            throw new ArgumentException("disks: each entry is {\"image\": UUID, \"destination\": UUID}, not null");
        var disks = body.Disks.Select(d => new DiskMoveRequest(ImageId.Parse(d.Image), DomainId.Parse(d.Destination))).ToValueList();
        var strategy = body.Strategy switch
        {
            null or "pre-copy" => MigrationStrategy.PreCopy,
            "post-copy" => MigrationStrategy.PostCopy,
            var s => throw new ArgumentException($"strategy '{ApiText.Clip(s)}' is not pre-copy or post-copy"),
        };
        var mode = body.CopyMode switch
        {
            null or "background" => CopyMode.Background,
            "write-blocking" => CopyMode.WriteBlocking,
            var m => throw new ArgumentException($"copy mode '{ApiText.Clip(m)}' is not background or write-blocking"),
        };
        if (body.BandwidthBytesPerSecond < 0) throw new ArgumentException("bandwidthBytesPerSecond must be 0 (unlimited) or more");
        if (body.MaxParallelDisks is < 1 or > 64) throw new ArgumentException("maxParallelDisks must be between 1 and 64");
        return new MigrationRequest(vm, disks, strategy, body.BandwidthBytesPerSecond, mode, body.MaxParallelDisks);
    }

    /// <remarks>
    /// What every reader of a migration sees (lsm, the dashboard, the event streams): each step attempt once (a step the
    /// saga sent again after a restart is journaled as started twice; the entry that ended wins), and no error on a
    /// completed migration (an error a retried step got past is history; the step table keeps its outcome).
    /// </remarks>
    public static MigrationResponse ResponseOf(MigrationView view)
    {
        var completed = view.Status == "completed";
        return new(
            view.Id.ToString(),
            view.Vm?.ToString() ?? "",
            view.Status,
            view.Finished,
            view.Strategy == MigrationStrategy.PostCopy ? "post-copy" : "pre-copy",
            view.Disks.Select(d => new DiskResponse(
                d.Image.ToString(), d.Source.ToString(), d.Destination.ToString(), d.Phase, d.Step?.ToString(), d.Attempt, d.Done, d.Total,
                d.Remaining?.TotalSeconds, completed ? null : d.LastError,
                DistinctAttempts(d.Timings).Select(t => new StepTimingResponse(t.Step.ToString(), t.Attempt, t.StartedAt, t.EndedAt, t.Outcome, t.SwitchStallMs, t.Note)).ToList(),
                d.Copied)).ToList(),
            !completed && view.Error is { } e ? $"{e.Code}: {e.Message}" : null,
            completed ? null : view.Error?.Code,
            completed ? null : view.Error?.Message,
            view.RequestedAt,
            view.UpdatedAt,
            view.FinishedAt,
            (view.LeftBehind ?? ValueList<LeftBehind>.Empty).Select(l => new LeftBehindResponse(l.Image.ToString(), l.Domain.ToString(), l.What, l.Remove)).ToList(),
            view.Limits?.BandwidthBytesPerSecond,
            view.Limits is { } limits ? (limits.CopyMode == Shared.Model.CopyMode.WriteBlocking ? "write-blocking" : "background") : null,
            view.Limits?.MaxParallelDisks);
    }

    /// <summary>One entry per (step, attempt), in the order they first started: the one that ended, else the latest.</summary>
    public static IEnumerable<StepTimingView> DistinctAttempts(IEnumerable<StepTimingView> timings) =>
        timings
            .Select((t, order) => (Timing: t, Order: order))
            .GroupBy(x => (x.Timing.Step, x.Timing.Attempt))
            .Select(g => (First: g.Min(x => x.Order), Chosen: g.OrderBy(x => x.Timing.EndedAt is null ? 0 : 1).ThenBy(x => x.Order).Last().Timing))
            .OrderBy(x => x.First)
            .Select(x => x.Chosen);

    private static int StatusFor(string code) => code switch
    {
        MigrationErrorCodes.MigrationNotFound or ErrorCodes.VmNotFound or ErrorCodes.DomainNotFound or ErrorCodes.ImageNotFound => StatusCodes.Status404NotFound,
        MigrationErrorCodes.DiskBusy or MigrationErrorCodes.MigrationExists or MigrationErrorCodes.MigrationFinished
            or MigrationErrorCodes.PointOfNoReturnPassed or MigrationErrorCodes.NotSuspended or ErrorCodes.Conflict => StatusCodes.Status409Conflict,
        _ => StatusCodes.Status422UnprocessableEntity,
    };

    private static IResult Refused(int status, string code, string message) =>
        Results.Json(new { code, message }, statusCode: status);

}
