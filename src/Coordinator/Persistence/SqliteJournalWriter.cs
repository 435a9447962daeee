using System.Threading.Channels;
using Akka.Event;
using Microsoft.Data.Sqlite;

namespace LiveMigration.Coordinator.Persistence;

/// <summary>
/// The one writer of a SQLite journal file. Rows handed to it by any number of writes are inserted in the order they
/// came, all that are waiting (up to <c>maxRowsPerCommit</c>, at least one write whole) in one transaction: one commit,
/// one sync of the write-ahead log, as the plugin's batching queue does. The insert is one prepared statement on one
/// connection. A write is acknowledged only once its transaction committed; a transaction that fails fails its writes
/// (when a row broke a constraint, each write of it is tried alone, so only the offending one fails), and the next
/// batch opens a new connection. A write whose caller gave up before its transaction began is not written.
/// </summary>
internal sealed class SqliteJournalWriter
{
    public sealed record Row(string PersistenceId, long SequenceNr, byte[] Message, string Manifest, int SerializerId, string? WriterUuid, long Created);

    private sealed record Pending(IReadOnlyList<Row> Rows, CancellationToken GivenUp, TaskCompletionSource Written);

    private const int SqliteConstraint = 19;

    private readonly Channel<Pending> _pending = Channel.CreateUnbounded<Pending>(new UnboundedChannelOptions { SingleReader = true });
    private readonly string _connectionString;
    private readonly string _insertSql;
    private readonly int _maxRowsPerCommit;
    private readonly ILoggingAdapter _log;
    private volatile bool _stopped;
    private SqliteConnection? _connection;
    private SqliteCommand? _insert;

    /// <param name="insertSql">An INSERT of one row with the parameters $id, $nr, $message, $manifest, $serializer, $writer, $created.</param>
    public SqliteJournalWriter(string connectionString, string insertSql, int maxRowsPerCommit, ILoggingAdapter log)
    {
        _connectionString = connectionString;
        _insertSql = insertSql;
        _maxRowsPerCommit = Math.Max(1, maxRowsPerCommit);
        _log = log;
        Task.Run(WriteWhatComesAsync).ContinueWith(loop => Stopped(loop.Exception?.GetBaseException()), TaskScheduler.Default);
    }

    /// <summary>Completes once the rows are committed; fails when their transaction did, or when the writer stopped first.</summary>
    public Task WriteAsync(IReadOnlyList<Row> rows, CancellationToken givenUp)
    {
        var pending = new Pending(rows, givenUp, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        if (_stopped || !_pending.Writer.TryWrite(pending))
            pending.Written.TrySetException(new InvalidOperationException("The journal's writer has stopped"));
        return pending.Written.Task;
    }

    /// <summary>The journal stopped: what is being written finishes, what waits fails (as the plugin cancels its queue).</summary>
    public void Stop()
    {
        _stopped = true;
        _pending.Writer.TryComplete();
    }

    private async Task WriteWhatComesAsync()
    {
        var reader = _pending.Reader;
        var batch = new List<Pending>();
        try
        {
            while (await reader.WaitToReadAsync())
            {
                batch.Clear();
                var rows = 0;
                while (rows < _maxRowsPerCommit && reader.TryRead(out var next))
                {
                    if (_stopped) next.Written.TrySetException(new InvalidOperationException("The journal stopped before this write began"));
                    else if (next.GivenUp.IsCancellationRequested) next.Written.TrySetCanceled(next.GivenUp);
                    else
                    {
                        batch.Add(next);
                        rows += next.Rows.Count;
                    }
                }
                if (batch.Count == 0) continue;
                try
                {
                    Commit(batch);
                    foreach (var pending in batch) pending.Written.TrySetResult();
                }
                catch (SqliteException e) when (e.SqliteErrorCode == SqliteConstraint && batch.Count > 1)
                {
                    // One write's row already there (a repeated sequence number): the others in its transaction are innocent.
                    foreach (var pending in batch) WriteAlone(pending);
                }
                catch (Exception e)
                {
                    Failed(batch, e);
                }
            }
        }
        finally
        {
            // A fault that escaped left the batch in hand unanswered (a no-op for those answered).
            foreach (var pending in batch) pending.Written.TrySetException(new InvalidOperationException("The journal's writer stopped on a fault"));
            Close();
        }
    }

    private void WriteAlone(Pending pending)
    {
        try
        {
            Commit([pending]);
            pending.Written.TrySetResult();
        }
        catch (Exception e)
        {
            Failed([pending], e);
        }
    }

    private void Commit(IReadOnlyList<Pending> batch)
    {
        if (_connection is null || _insert is null) Open();
        using var transaction = _connection!.BeginTransaction();
        _insert!.Transaction = transaction;
        foreach (var pending in batch)
        foreach (var row in pending.Rows)
        {
            _insert.Parameters[0].Value = row.PersistenceId;
            _insert.Parameters[1].Value = row.SequenceNr;
            _insert.Parameters[2].Value = row.Message;
            _insert.Parameters[3].Value = row.Manifest;
            _insert.Parameters[4].Value = row.SerializerId;
            _insert.Parameters[5].Value = (object?)row.WriterUuid ?? DBNull.Value;
            _insert.Parameters[6].Value = row.Created;
            _insert.ExecuteNonQuery();
        }
        transaction.Commit();
    }

    /// <summary>A failed transaction rolled back; its connection may be in any state, so the next batch opens another.</summary>
    private void Failed(IReadOnlyList<Pending> batch, Exception e)
    {
        var first = batch[0].Rows.Count > 0 ? batch[0].Rows[0] : null;
        _log.Error(e, "Journal write of {0} write(s) failed, none of them written (first: {1} #{2}): {3}",
            batch.Count, first?.PersistenceId, first?.SequenceNr, e.Message);
        Close();
        foreach (var pending in batch) pending.Written.TrySetException(e);
    }

    private void Open()
    {
        var connection = new SqliteConnection(_connectionString);
        try
        {
            connection.Open();
            var insert = connection.CreateCommand();
            insert.CommandText = _insertSql;
            insert.Parameters.Add("$id", SqliteType.Text);
            insert.Parameters.Add("$nr", SqliteType.Integer);
            insert.Parameters.Add("$message", SqliteType.Blob);
            insert.Parameters.Add("$manifest", SqliteType.Text);
            insert.Parameters.Add("$serializer", SqliteType.Integer);
            insert.Parameters.Add("$writer", SqliteType.Text);
            insert.Parameters.Add("$created", SqliteType.Integer);
            (_connection, _insert) = (connection, insert);
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    private void Close()
    {
        try
        {
            _insert?.Dispose();
            _connection?.Dispose();
        }
        catch (Exception e)
        {
            _log.Warning("Closing the journal writer's connection failed: {0}", e.Message);
        }
        (_connection, _insert) = (null, null);
    }

    /// <summary>The loop ended (stopped, or a fault escaped it): nothing written from now on may wait for ever.</summary>
    private void Stopped(Exception? fault)
    {
        _stopped = true;
        _pending.Writer.TryComplete();
        if (fault is not null) _log.Error(fault, "The journal's writer stopped on a fault; writes fail until the Coordinator restarts");
        var why = fault ?? new InvalidOperationException("The journal's writer has stopped");
        while (_pending.Reader.TryRead(out var left)) left.Written.TrySetException(why);
    }
}
